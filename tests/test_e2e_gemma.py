"""Gemma, Gemma 2 and Gemma 3 end to end: `mono-llm serve`'s app on the tiny fixtures, the
real `openai` client, replies equal to transformers' greedy generation from the same chat
template, and the templates' refusals of a system message (Gemma and Gemma 2: any; Gemma 3:
one that is not the first message) as a 400 that names the problem. Gemma 3's template folds
a leading system message into the first user turn.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.e2e_models import hf_chat_reply

transformers = pytest.importorskip("transformers")

# tiny-gemma2's and tiny-gemma3's 16-token sliding window is shorter than the conversations.
MODELS = ["tiny-gemma", "tiny-gemma2", "tiny-gemma3"]
NO_SYSTEM_ROLE = ["tiny-gemma", "tiny-gemma2"]
NEW_TOKENS = 10


@pytest.fixture(scope="module")
def gemma_server(server_factory: Any) -> Iterator[Any]:
    from mono_llm.core.config import AsyncEngineArgs
    from mono_llm.core.testing import fixture_path
    from mono_llm.openai_api import build_app

    engines = [
        AsyncEngineArgs(model=str(fixture_path(name)), served_model_name=name) for name in MODELS
    ]
    with server_factory(build_app(engines)) as running:
        yield running


def hf_reply(name: str, messages: list[dict[str, Any]]) -> str:
    """transformers' greedy reply (no stop token) to `messages` under the model's template."""
    from mono_llm.core.testing import fixture_path

    return hf_chat_reply(fixture_path(name), messages, NEW_TOKENS, stop_at_eos=False)[1]


@pytest.mark.parametrize("name", MODELS)
def test_chat_reply_equals_transformers(gemma_server: Any, name: str) -> None:
    messages = [
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "Tell me a story about a café."},
    ]
    client = gemma_server.openai()
    reply = client.chat.completions.create(
        model=name,
        messages=messages,
        temperature=0,
        max_tokens=NEW_TOKENS,
        extra_body={"ignore_eos": True},
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == NEW_TOKENS
    assert reply.choices[0].message.content == hf_reply(name, messages)
    stream = client.chat.completions.create(
        model=name,
        messages=messages,
        temperature=0,
        max_tokens=NEW_TOKENS,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert streamed == reply.choices[0].message.content


@pytest.mark.parametrize("name", NO_SYSTEM_ROLE)
def test_system_message_is_a_400_naming_the_problem(gemma_server: Any, name: str) -> None:
    client = gemma_server.openai()
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=name,
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello"},
            ],
            max_tokens=4,
        )
    assert caught.value.status_code == 400
    error = caught.value.body
    assert "System role not supported" in error["message"]
    assert error["type"] == "BadRequestError" and error["param"] == "messages"
    # The server stays healthy: the same conversation without the system turn is answered.
    reply = client.chat.completions.create(
        model=name, messages=[{"role": "user", "content": "Hello"}], max_tokens=4
    )
    assert reply.choices[0].message.role == "assistant"


def test_gemma3_folds_a_leading_system_message_into_the_first_turn(gemma_server: Any) -> None:
    name = "tiny-gemma3"
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tell me a story about a café."},
    ]
    client = gemma_server.openai()
    reply = client.chat.completions.create(
        model=name,
        messages=messages,
        temperature=0,
        max_tokens=NEW_TOKENS,
        extra_body={"ignore_eos": True},
    )
    assert reply.choices[0].message.content == hf_reply(name, messages)
    # The system text reached the model: without it the prompt is shorter and the reply differs.
    plain = client.chat.completions.create(
        model=name,
        messages=messages[1:],
        temperature=0,
        max_tokens=NEW_TOKENS,
        extra_body={"ignore_eos": True},
    )
    assert reply.usage.prompt_tokens > plain.usage.prompt_tokens
    # A system message after the first one is refused by the template: a 400, and the server
    # keeps serving.
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=name,
            messages=[*messages, {"role": "system", "content": "Now be long."}],
            max_tokens=4,
        )
    assert caught.value.status_code == 400
    assert "only supported as the first message" in caught.value.body["message"]
    again = client.chat.completions.create(
        model=name,
        messages=messages,
        temperature=0,
        max_tokens=NEW_TOKENS,
        extra_body={"ignore_eos": True},
    )
    assert again.choices[0].message.content == reply.choices[0].message.content
