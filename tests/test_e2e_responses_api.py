"""The Responses API (/v1/responses) through the real `openai` client on the session server.

The fixture models have random weights: what is checked is the protocol (items, events,
ids, usage, stored conversations), with grammars forcing the shapes where needed.
"""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from mono_llm.core.testing import fixture_path

LLAMA = "tiny-llama"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather",
    "parameters": {
        "type": "object",
        "properties": {"city": {"enum": ["Paris", "Oslo"]}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


@pytest.fixture(scope="module")
def no_whitespace() -> dict[str, int]:
    tokenizer = AutoTokenizer.from_pretrained(fixture_path(LLAMA))
    return {str(i): -100 for i in range(len(tokenizer)) if not tokenizer.decode([i]).strip()}


def test_plain_response_shape_and_usage(client) -> None:
    response = client.responses.create(
        model=LLAMA, input="Tell me a joke.", instructions="Be brief.", max_output_tokens=8,
        temperature=0,
    )  # fmt: skip
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.model == LLAMA and response.instructions == "Be brief."
    (message,) = response.output
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_") and message.content[0].type == "output_text"
    assert response.output_text == message.content[0].text
    usage = response.usage
    assert usage.output_tokens <= 8 and usage.input_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens >= 0
    assert usage.output_tokens_details.reasoning_tokens == 0
    if usage.output_tokens == 8:
        assert response.status == "incomplete"
        assert response.incomplete_details.reason == "max_output_tokens"
    else:
        assert response.status == "completed"
    # Same greedy answer as the chat endpoint on the same conversation.
    chat = client.chat.completions.create(
        model=LLAMA, max_tokens=8, temperature=0,
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "Tell me a joke."}],
    )  # fmt: skip
    assert chat.choices[0].message.content == response.output_text
    assert chat.usage.prompt_tokens == usage.input_tokens


def test_streamed_events_follow_openai_order(client) -> None:
    events = list(
        client.responses.create(
            model=LLAMA, input="Say something.", max_output_tokens=6, temperature=0, stream=True
        )
    )
    types = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert types[:5] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        types[-1],
    ]
    assert types[-1] in ("response.completed", "response.incomplete")
    assert set(types[4:-4]) == {"response.output_text.delta"}
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert events[0].response.status == "in_progress" and final.output_text == deltas
    assert events[-4].text == deltas
    item_ids = {e.item_id for e in events if hasattr(e, "item_id")}
    assert item_ids == {final.output[0].id}
    plain = client.responses.create(
        model=LLAMA, input="Say something.", max_output_tokens=6, temperature=0
    )
    assert plain.output_text == deltas


def test_forced_function_tool_and_chained_tool_output(client, no_whitespace) -> None:
    first = client.responses.create(
        model=LLAMA,
        input="What is the weather in Paris?",
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=200,
        temperature=0,
        extra_body={"logit_bias": no_whitespace},
    )
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.call_id.startswith("call_") and call.id.startswith("fc_")
    assert json.loads(call.arguments)["city"] in ("Paris", "Oslo")
    assert first.status == "completed"

    second = client.responses.create(
        model=LLAMA,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "22 C"}],
        max_output_tokens=4,
        temperature=0,
    )
    assert second.previous_response_id == first.id
    # The second prompt is the whole exchange: question, the call, and its output.
    tokenized = client.post(
        "/../tokenize",
        cast_to=object,
        body={
            "model": LLAMA,
            "messages": [
                {"role": "user", "content": "What is the weather in Paris?"},
                {"role": "assistant", "content": "",
                 "tool_calls": [{"id": call.call_id, "type": "function",
                                 "function": {"name": "get_weather",
                                              "arguments": call.arguments}}]},
                {"role": "tool", "tool_call_id": call.call_id, "content": "22 C"},
            ],
        },
    )  # fmt: skip
    assert second.usage.input_tokens == tokenized["count"]
    items = client.responses.input_items.list(second.id)
    (item,) = items.data
    assert item.type == "function_call_output" and item.call_id == call.call_id


def test_streamed_forced_tool_call_events(client, no_whitespace) -> None:
    events = list(
        client.responses.create(
            model=LLAMA,
            input="Weather?",
            tools=[WEATHER],
            tool_choice="required",
            max_output_tokens=300,
            temperature=0,
            stream=True,
            extra_body={"logit_bias": no_whitespace},
        )
    )
    types = [e.type for e in events]
    assert types[2] == "response.output_item.added" and events[2].item.type == "function_call"
    assert "response.function_call_arguments.delta" in types
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert json.loads(done.arguments)["city"] in ("Paris", "Oslo")
    assert events[-1].response.output[0].name == "get_weather"


def test_text_format_json_schema(client, no_whitespace) -> None:
    schema = WEATHER["parameters"]
    response = client.responses.create(
        model=LLAMA,
        input="Weather as JSON.",
        text={"format": {"type": "json_schema", "name": "weather", "schema": schema}},
        max_output_tokens=200,
        temperature=0,
        extra_body={"logit_bias": no_whitespace},
    )
    assert json.loads(response.output_text)["city"] in ("Paris", "Oslo")
    assert response.text.format.type == "json_schema"


def test_retrieve_list_items_and_delete(client) -> None:
    created = client.responses.create(
        model=LLAMA,
        input=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        ],
        max_output_tokens=3,
    )
    fetched = client.responses.retrieve(created.id)
    assert fetched.id == created.id and fetched.output_text == created.output_text
    items = client.responses.input_items.list(created.id)
    assert [i.role for i in items.data] == ["user", "developer"]  # newest first
    ascending = client.responses.input_items.list(created.id, order="asc", limit=1)
    assert [i.role for i in ascending.data] == ["developer"] and ascending.has_more
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError, match="not found"):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=LLAMA, input="Hi", previous_response_id=created.id)
    unstored = client.responses.create(model=LLAMA, input="Hi", max_output_tokens=2, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_background_poll_and_cancel(client) -> None:
    queued = client.responses.create(
        model=LLAMA, input="Tell me a story.", background=True, max_output_tokens=16
    )
    assert queued.status in ("queued", "in_progress") and queued.background
    deadline = time.monotonic() + 60
    polled = client.responses.retrieve(queued.id)
    while polled.status in ("queued", "in_progress") and time.monotonic() < deadline:
        time.sleep(0.05)
        polled = client.responses.retrieve(queued.id)
    assert polled.status in ("completed", "incomplete") and polled.usage.output_tokens > 0

    long = client.responses.create(
        model=LLAMA, input="Tell me a long story.", background=True, max_output_tokens=900,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    cancelled = client.responses.cancel(long.id)
    assert cancelled.status == "cancelled"
    assert client.responses.retrieve(long.id).status == "cancelled"
    foreground = client.responses.create(model=LLAMA, input="Hi", max_output_tokens=2)
    with pytest.raises(openai.BadRequestError, match="background"):
        client.responses.cancel(foreground.id)


def test_bad_and_oversized_requests_are_4xx_and_server_stays_up(server, client) -> None:
    url = f"{server.v1}/responses"
    headers = server.headers()
    bad = [
        ({"model": LLAMA, "input": [{"type": "web_search_call"}]}, "input.0.type"),
        ({"model": LLAMA, "input": "hi", "tools": [{"type": "web_search"}]}, "tools.0"),
        ({"model": LLAMA, "input": [{"role": "user"}] * 2000}, "input"),
        ({"model": LLAMA, "input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"model": LLAMA, "input": "hi", "background": True, "store": False}, "background"),
        ({"model": LLAMA, "input": "hi", "previous_response_id": "resp_nope"},
         "previous_response_id"),
        ({"model": LLAMA, "input": "hi", "tool_choice": "sometimes"}, "tool_choice"),
        ({"model": LLAMA, "input": "x " * 5000}, "messages"),
    ]  # fmt: skip
    for body, param in bad:
        reply = httpx.post(url, json=body, headers=headers, timeout=60)
        assert 400 <= reply.status_code < 500, (body, reply.text)
        error = reply.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["param"] == param, (body, error)
    assert httpx.get(f"{url}/resp_missing", headers=headers).status_code == 404
    assert httpx.get(f"{url}/resp_x/input_items?limit=0", headers=headers).status_code == 400
    assert httpx.post(url, json={"model": LLAMA, "input": "hi"}).status_code == 401
    assert httpx.get(f"{server.base_url}/health").status_code == 200
    assert client.responses.create(model=LLAMA, input="Hi", max_output_tokens=2).status
