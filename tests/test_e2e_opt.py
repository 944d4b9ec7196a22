"""An OPT checkpoint served as a user serves one: `mono-llm serve <folder>` in a subprocess,
talked to with the official `openai` client. OPT is a base model without a chat template:
completions work (matching the offline engine's greedy text) and chat is a clear 400."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import httpx
import openai
import pytest

from mono_llm.core.testing import fixture_path
from tests.conftest import free_port, mono_llm_command, wait_ready

MODEL = "tiny-opt-post-ln"  # as opt-350m: post-LN, project_in/out, vocab.json + merges.txt
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def opt_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of `mono-llm serve <opt folder> --served-model-name tiny-opt-post-ln`."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("opt-serve") / "serve.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*mono_llm_command(), "serve", str(fixture_path(MODEL)),
             "--served-model-name", MODEL, "--host", "127.0.0.1", "--port", str(port),
             "--max-model-len", "512", "--disable-uvicorn-access-log"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process, log_path)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)
    assert "Traceback" not in log_path.read_text(), log_path.read_text()[-3000:]


@pytest.fixture(scope="module")
def client(opt_server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{opt_server}/v1", api_key="unused", max_retries=0, timeout=60)


def _offline_greedy(max_tokens: int) -> str:
    from mono_llm.core import LLM, SamplingParams

    llm = LLM(model=str(fixture_path(MODEL)), max_model_len=512, seed=0)
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    return llm.generate([PROMPT], params)[0].outputs[0].text


def test_completion_matches_the_offline_engine(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]
    completion = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0, extra_body={"ignore_eos": True}
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "length"
    assert completion.usage.completion_tokens == 12
    # The prompt's tokens as HF's tokenizer makes them, `</s>` (OPT's BOS) first.
    import transformers

    expected_ids = transformers.AutoTokenizer.from_pretrained(fixture_path(MODEL))(PROMPT)
    assert expected_ids.input_ids[0] == 2
    assert completion.usage.prompt_tokens == len(expected_ids.input_ids)
    assert choice.text == _offline_greedy(12)

    stream = client.completions.create(
        model=MODEL,
        prompt=PROMPT,
        max_tokens=12,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    assert "".join(c.choices[0].text for c in stream if c.choices) == choice.text


def test_prompt_starts_with_the_bos_token(opt_server: str) -> None:
    tokens = httpx.post(
        f"{opt_server}/tokenize", json={"model": MODEL, "prompt": PROMPT}, timeout=30
    ).json()["tokens"]
    assert tokens[0] == 2 and 2 not in tokens[1:]


def test_chat_without_a_chat_template_is_a_400(client: openai.OpenAI, opt_server: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=4
        )
    assert caught.value.status_code == 400
    error = caught.value.body
    assert "chat template" in error["message"] and error["param"] == "chat_template"
    # The server is unharmed.
    assert httpx.get(f"{opt_server}/health", timeout=10).status_code == 200
    again = client.completions.create(model=MODEL, prompt="Hello", max_tokens=3)
    assert again.choices[0].finish_reason in ("stop", "length")
