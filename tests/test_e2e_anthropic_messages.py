"""POST /v1/messages through the real `anthropic` client on the session server (API key sent
as `x-api-key`, as that client does)."""

from __future__ import annotations

import json

import anthropic
import httpx
import pytest

from tests.conftest import API_KEY

LLAMA = "tiny-llama"
WEATHER = {
    "name": "get_weather",
    "description": "Current weather",
    "input_schema": {"type": "object", "properties": {"city": {"enum": ["Paris", "Zürich"]}},
                     "required": ["city"], "additionalProperties": False},
}  # fmt: skip
# This client version has no sampling arguments; the server reads them from the body.
GREEDY = {"temperature": 0}
HERMES = r'Checking\. <tool_call>\{"name": "get_weather", "arguments": \{"city": "Zürich"\}\}</tool_call>'


@pytest.fixture(scope="module")
def claude(server):
    return anthropic.Anthropic(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=60)


def test_plain_message(claude) -> None:
    message = claude.messages.create(
        model=LLAMA, max_tokens=8, system="Be brief.", extra_body=GREEDY,
        messages=[{"role": "user", "content": "Hello"}],
    )  # fmt: skip
    assert message.type == "message" and message.role == "assistant" and message.model == LLAMA
    assert message.id.startswith("msg_")
    (block,) = message.content
    assert block.type == "text"
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 0 and 0 < message.usage.output_tokens <= 8


def test_streamed_events_and_same_text(claude) -> None:
    kwargs = {"model": LLAMA, "max_tokens": 8, "extra_body": GREEDY,
              "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}  # fmt: skip
    plain = claude.messages.create(**kwargs)
    with claude.messages.stream(**kwargs) as stream:
        events = [event.type for event in stream if not event.type.startswith(("text", "input"))]
        final = stream.get_final_message()
    assert events[:2] == ["message_start", "content_block_start"]
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(events[2:-3]) <= {"content_block_delta"}
    assert final.content[0].text == plain.content[0].text
    assert (
        final.stop_reason == plain.stop_reason
        and final.usage.output_tokens == plain.usage.output_tokens
    )


def test_forced_tool_use_and_tool_result_turn(claude) -> None:
    message = claude.messages.create(
        model=LLAMA, max_tokens=100, extra_body=GREEDY, tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": "Weather in Zürich?"}],
    )  # fmt: skip
    (use,) = message.content
    assert use.type == "tool_use" and use.name == "get_weather" and use.id.startswith("toolu_")
    assert use.input["city"] in ("Paris", "Zürich") and message.stop_reason == "tool_use"
    follow = claude.messages.create(
        model=LLAMA, max_tokens=4, extra_body=GREEDY, tools=[WEATHER], tool_choice={"type": "none"},
        messages=[
            {"role": "user", "content": "Weather in Zürich?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": use.id,
                                               "name": use.name, "input": use.input}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                          "content": "22 C"}]},
        ],
    )  # fmt: skip
    assert (
        follow.content[0].type == "text" and follow.usage.input_tokens > message.usage.input_tokens
    )


def test_auto_tool_use_streams_input_json(claude) -> None:
    kwargs = {"model": LLAMA, "max_tokens": 80, "tools": [WEATHER],
              "messages": [{"role": "user", "content": "Weather?"}],
              "extra_body": {**GREEDY, "structured_outputs": {"regex": HERMES}}}  # fmt: skip
    plain = claude.messages.create(**kwargs)
    text, use = plain.content
    assert text.text == "Checking." and use.input == {"city": "Zürich"}
    assert plain.stop_reason == "tool_use"
    with claude.messages.stream(**kwargs) as stream:
        pieces = [e.partial_json for e in stream if e.type == "input_json"]
        final = stream.get_final_message()
    assert len(pieces) > 1 and json.loads("".join(pieces)) == {"city": "Zürich"}
    assert [b.type for b in final.content] == ["text", "tool_use"]
    assert final.content[1].input == {"city": "Zürich"}


def test_stop_sequences(claude) -> None:
    message = claude.messages.create(
        model=LLAMA, max_tokens=40, stop_sequences=["STOP"],
        messages=[{"role": "user", "content": "Go"}],
        extra_body={"structured_outputs": {"regex": "go on STOP and more"}},
    )  # fmt: skip
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "STOP"
    assert message.content[0].text == "go on "


def test_bad_requests_are_anthropic_errors_and_server_stays_up(server, claude) -> None:
    url = f"{server.base_url}/v1/messages"
    headers = {"x-api-key": API_KEY}
    user = [{"role": "user", "content": "hi"}]
    bad = [
        {"model": LLAMA, "messages": user},  # no max_tokens
        {"model": LLAMA, "max_tokens": 5, "messages": []},
        {"model": LLAMA, "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
        {
            "model": LLAMA,
            "max_tokens": 5,
            "messages": [{"role": "user", "content": [{"type": "video"}]}],
        },
        {"model": LLAMA, "max_tokens": 5, "messages": user, "tools": [WEATHER] * 200},
        {"model": LLAMA, "max_tokens": 5, "messages": user, "stop_sequences": ["x"] * 100},
        {"model": LLAMA, "max_tokens": 5, "messages": user, "tool_choice": {"type": "maybe"}},
        {"model": LLAMA, "max_tokens": 10**6, "messages": user},
        {"model": "no-such-model", "max_tokens": 5, "messages": user},
        {"model": LLAMA, "max_tokens": 5, "messages": [{"role": "user", "content": "x " * 5000}]},
    ]
    for body in bad:
        reply = httpx.post(url, json=body, headers=headers, timeout=60)
        assert 400 <= reply.status_code < 500, (body, reply.text)
        payload = reply.json()
        assert payload["type"] == "error" and set(payload["error"]) == {"type", "message"}
        assert payload["error"]["type"] in ("invalid_request_error", "not_found_error")
    broken = httpx.post(url, content=b"{nope", headers=headers, timeout=60)
    assert broken.status_code == 400 and broken.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model=LLAMA, max_tokens=5, messages=[])
    unauthorized = httpx.post(url, json=bad[1], headers={"x-api-key": "wrong"})
    assert unauthorized.status_code == 401
    assert unauthorized.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{server.base_url}/health").status_code == 200
    assert claude.messages.create(model=LLAMA, max_tokens=2, messages=user).content
