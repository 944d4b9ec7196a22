"""A Phi-3 folder served as a user serves one: `mono-llm serve <folder>` in a subprocess, the
official `openai` client's chat.completions against HF transformers' greedy answer to the
same chat (the Phi-3 chat template, LongRoPE with 3/4 of each head rotated, tied embeddings)."""

from __future__ import annotations

import openai
import pytest

from mono_llm.core.testing import fixture_path
from tests.e2e_models import hf_chat_reply, serve_folder

MESSAGES = [
    {"role": "system", "content": "You answer in one line."},
    {"role": "user", "content": "What is the capital of France?"},
]
MAX_TOKENS = 12


def _hf_chat_answer(folder) -> tuple[str, int]:
    """(text, completion tokens) of transformers' greedy answer under the Phi-3 template."""
    prompt, text, tokens = hf_chat_reply(folder, MESSAGES, MAX_TOKENS)
    assert prompt.endswith("<|user|>\nWhat is the capital of France?<|end|>\n<|assistant|>\n")
    return text, tokens


@pytest.fixture(scope="module")
def phi3_server(tmp_path_factory: pytest.TempPathFactory):
    log_path = tmp_path_factory.mktemp("phi3") / "serve.log"
    # Within the original context (512): the short LongRoPE factors, as transformers uses them
    # for every sequence this short.
    with serve_folder(
        fixture_path("tiny-phi3"), "tiny-phi3", log_path, "--max-model-len", "512"
    ) as client:
        yield client


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
