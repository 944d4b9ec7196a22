"""Base models (OPT, GPT-2, GPT-NeoX) served as a user serves one: `mono-llm serve
<folder>` in a subprocess, talked to with the official `openai` client. None has a chat
template: completions work (matching the offline engine's greedy text) and chat is a
clear 400."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from mono_llm.core.testing import fixture_path
from tests.e2e_models import serve_folder

PROMPT = "The capital of France is"
# Served fixture -> the BOS id its tokenizer prepends (None: nothing is prepended).
MODELS = {
    "tiny-opt-post-ln": 2,  # as opt-350m: post-LN, project_in/out, vocab.json + merges.txt
    "tiny-gpt2": None,  # GPT-2's Conv1D checkpoint; `<|endoftext|>` is never prepended
    "tiny-gpt-neox": None,  # as Pythia: partial rotary, parallel residual, untied head
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def client(model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    """An `openai` client of `mono-llm serve <fixture folder> --served-model-name <fixture>`."""
    log_path = tmp_path_factory.mktemp(f"{model}-serve") / "serve.log"
    with serve_folder(fixture_path(model), model, log_path, "--max-model-len", "512") as client:
        yield client


@pytest.fixture(scope="module")
def server(client: openai.OpenAI) -> str:
    """The server's base URL, for the endpoints outside /v1."""
    return str(client.base_url).rstrip("/").removesuffix("/v1")


def _offline_greedy(model: str, max_tokens: int) -> str:
    from mono_llm.core import LLM, SamplingParams

    llm = LLM(model=str(fixture_path(model)), max_model_len=512, seed=0)
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    return llm.generate([PROMPT], params)[0].outputs[0].text


def test_completion_matches_the_offline_engine(client: openai.OpenAI, model: str) -> None:
    assert [m.id for m in client.models.list().data] == [model]
    completion = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=12, temperature=0, extra_body={"ignore_eos": True}
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "length"
    assert completion.usage.completion_tokens == 12
    # The prompt's tokens as HF's tokenizer makes them (OPT: `</s>` first).
    import transformers

    expected_ids = transformers.AutoTokenizer.from_pretrained(fixture_path(model))(PROMPT)
    assert (expected_ids.input_ids[0] == MODELS[model]) == (MODELS[model] is not None)
    assert completion.usage.prompt_tokens == len(expected_ids.input_ids)
    assert choice.text == _offline_greedy(model, 12)

    stream = client.completions.create(
        model=model,
        prompt=PROMPT,
        max_tokens=12,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    assert "".join(c.choices[0].text for c in stream if c.choices) == choice.text


def test_prompt_starts_with_the_bos_token_if_any(server: str, model: str) -> None:
    tokens = httpx.post(
        f"{server}/tokenize", json={"model": model, "prompt": PROMPT}, timeout=30
    ).json()["tokens"]
    bos = MODELS[model]
    if bos is None:  # GPT-2, GPT-NeoX: `<|endoftext|>` (id 0) is not prepended
        assert 0 not in tokens
    else:
        assert tokens[0] == bos and bos not in tokens[1:]


def test_chat_without_a_chat_template_is_a_400(
    client: openai.OpenAI, server: str, model: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hello"}], max_tokens=4
        )
    assert caught.value.status_code == 400
    error = caught.value.body
    assert "chat template" in error["message"] and error["param"] == "chat_template"
    # The server is unharmed.
    assert httpx.get(f"{server}/health", timeout=10).status_code == 200
    again = client.completions.create(model=model, prompt="Hello", max_tokens=3)
    assert again.choices[0].finish_reason in ("stop", "length")
