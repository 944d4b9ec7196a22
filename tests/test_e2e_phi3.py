"""A Phi-3 folder served as a user serves one: `mono-llm serve <folder>` in a subprocess, the
official `openai` client's chat.completions against HF transformers' greedy answer to the
same chat (the Phi-3 chat template, LongRoPE with 3/4 of each head rotated, tied embeddings)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import openai
import pytest
import torch

from mono_llm.core.testing import fixture_path
from tests.conftest import free_port, mono_llm_command, wait_ready

MESSAGES = [
    {"role": "system", "content": "You answer in one line."},
    {"role": "user", "content": "What is the capital of France?"},
]
MAX_TOKENS = 12


def _hf_chat_answer(folder: Path) -> tuple[str, int]:
    """(text, completion tokens) of transformers' greedy answer, stopping on the EOS ids of
    generation_config.json (<|endoftext|>, <|end|>) as the server does."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|user|>\nWhat is the capital of France?<|end|>\n<|assistant|>\n")
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, do_sample=False, max_new_tokens=MAX_TOKENS, pad_token_id=0)
    new = out[0, ids.shape[1] :].tolist()
    stops = model.generation_config.eos_token_id
    stops = stops if isinstance(stops, list) else [stops]
    answer = next((new[:i] for i, t in enumerate(new) if t in stops), new)
    return tokenizer.decode(answer, skip_special_tokens=True), len(new)


@pytest.fixture(scope="module")
def phi3_server(tmp_path_factory: pytest.TempPathFactory):
    folder = fixture_path("tiny-phi3")
    port = free_port()
    log_path = tmp_path_factory.mktemp("phi3") / "serve.log"
    with log_path.open("w") as log:
        # Within the original context (512): the short LongRoPE factors, as transformers
        # uses them for every sequence this short.
        process = subprocess.Popen(
            [*mono_llm_command(), "serve", str(folder), "--served-model-name", "tiny-phi3",
             "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "512",
             "--disable-uvicorn-access-log"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process, log_path)
        yield openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    assert "Traceback" not in log_path.read_text()


def test_chat_completion_matches_transformers(phi3_server) -> None:
    expected, hf_tokens = _hf_chat_answer(fixture_path("tiny-phi3"))
    response = phi3_server.chat.completions.create(
        model="tiny-phi3", messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0
    )
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == expected
    if choice.finish_reason == "length":
        assert response.usage.completion_tokens == MAX_TOKENS == hf_tokens
    stream = phi3_server.chat.completions.create(
        model="tiny-phi3", messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0, stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == expected


def test_oversized_request_is_a_400_and_the_server_keeps_serving(phi3_server) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        phi3_server.chat.completions.create(
            model="tiny-phi3", messages=MESSAGES, max_tokens=100_000, temperature=0
        )
    assert err.value.status_code == 400
    again = phi3_server.chat.completions.create(
        model="tiny-phi3", messages=MESSAGES, max_tokens=2, temperature=0
    )
    assert again.usage.completion_tokens <= 2
