"""Granite 3 and OLMo 2 folders served as a user serves one: `mono-llm serve <folder>` in a
subprocess, the official `openai` client's chat.completions against transformers' greedy
answer to the same chat under each model's own chat template (Granite's role markers,
OLMo 2's <|user|> turns)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from mono_llm.core.testing import fixture_path
from tests.e2e_models import hf_chat_reply, serve_folder

MESSAGES = [
    {"role": "system", "content": "You answer in one line."},
    {"role": "user", "content": "What is the capital of France?"},
]
MAX_TOKENS = 12
# What each template makes of MESSAGES' last turn and the generation prompt.
PROMPT_ENDINGS = {
    "tiny-granite": "<|start_of_role|>user<|end_of_role|>What is the capital of France?"
    "<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>",
    "tiny-olmo2": "<|user|>\nWhat is the capital of France?\n<|assistant|>\n",
}


@pytest.fixture(scope="module", params=sorted(PROMPT_ENDINGS))
def served(request: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    name = request.param
    log_path = tmp_path_factory.mktemp(name) / "serve.log"
    with serve_folder(fixture_path(name), name, log_path, "--max-model-len", "512") as client:
        yield name, client


def test_chat_completion_matches_transformers(served: tuple[str, Any]) -> None:
    name, client = served
    prompt, expected, hf_tokens = hf_chat_reply(fixture_path(name), MESSAGES, MAX_TOKENS)
    assert prompt.endswith(PROMPT_ENDINGS[name])
    response = client.chat.completions.create(
        model=name, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0
    )
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == expected
    assert response.usage.completion_tokens == min(hf_tokens + 1, MAX_TOKENS)
    stream = client.chat.completions.create(
        model=name, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0, stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == expected


def test_oversized_request_is_a_400_and_the_server_keeps_serving(served: tuple[str, Any]) -> None:
    name, client = served
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=name, messages=MESSAGES, max_tokens=100_000, temperature=0
        )
    assert err.value.status_code == 400
    assert err.value.body["param"] is not None or "max_tokens" in err.value.body["message"]
    again = client.chat.completions.create(
        model=name, messages=MESSAGES, max_tokens=2, temperature=0
    )
    assert again.usage.completion_tokens <= 2
