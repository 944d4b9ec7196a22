"""Tool calls through the API on the session server (`--tool-call-parser hermes`): a regex
makes the random fixture model write a crafted reply, and the reply's calls come back the
same streamed and not, name first, arguments in pieces, non-ASCII kept; forced calls are
compact JSON."""

from __future__ import annotations

import json
import re

LLAMA = "tiny-llama"
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]  # fmt: skip
REPLY = r'Hi there\. <tool_call>\{"name": "get_weather", "arguments": \{"city": "(Zürich|Tōkyō)"\}\}</tool_call>'
MESSAGES = [{"role": "user", "content": "Weather?"}]
STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')


def test_auto_tool_calls_streamed_like_unstreamed(client) -> None:
    extra = {"structured_outputs": {"regex": REPLY}}
    reply = client.chat.completions.create(
        model=LLAMA, messages=MESSAGES, tools=TOOLS, max_tokens=80, temperature=0, extra_body=extra
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Hi there."
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    city = json.loads(call.function.arguments)["city"]
    assert city in ("Zürich", "Tōkyō") and city in call.function.arguments  # no \u escapes

    stream = client.chat.completions.create(
        model=LLAMA, messages=MESSAGES, tools=TOOLS, max_tokens=80, temperature=0,
        extra_body=extra, stream=True,
    )  # fmt: skip
    content, deltas, finish = "", [], None
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        deltas += delta.tool_calls or []
        finish = chunk.choices[0].finish_reason or finish
    assert content == "Hi there." and finish == "tool_calls"
    assert deltas[0].function.name == "get_weather" and deltas[0].id
    assert deltas[0].function.arguments == ""  # the name goes out first
    pieces = [d.function.arguments for d in deltas[1:]]
    assert len(pieces) > 1 and "".join(pieces) == call.function.arguments
    assert all(d.index == 0 and d.function.name is None for d in deltas[1:])


def test_responses_auto_tool_call_streams_arguments(client) -> None:
    tools = [{"type": "function", **TOOLS[0]["function"]}]
    extra = {"structured_outputs": {"regex": REPLY}}
    events = list(
        client.responses.create(
            model=LLAMA, input="Weather?", tools=tools, max_output_tokens=80, temperature=0,
            extra_body=extra, stream=True,
        )
    )  # fmt: skip
    final = events[-1].response
    message, call = final.output
    assert message.content[0].text == "Hi there." and call.type == "function_call"
    pieces = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert len(pieces) > 1 and "".join(pieces) == call.arguments


def test_forced_tool_calls_are_compact_json(client) -> None:
    """No logit_bias against whitespace is needed any more: the grammar allows none."""
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "required": ["city", "days"],
        "properties": {"city": {"enum": ["Zürich", "Oslo"]}, "days": {"type": "integer"}}}}}]  # fmt: skip
    for tool_choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        for stream in (False, True):
            response = client.chat.completions.create(
                model=LLAMA, messages=MESSAGES, tools=tools, tool_choice=tool_choice,
                max_tokens=300, temperature=0, stream=stream,
            )  # fmt: skip
            if stream:
                by_index: dict[int, str] = {}
                for chunk in response:
                    for d in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                        by_index[d.index] = by_index.get(d.index, "") + (d.function.arguments or "")
                calls = list(by_index.values())
            else:
                calls = [c.function.arguments for c in response.choices[0].message.tool_calls]
            assert calls
            for arguments in calls:
                assert "city" in json.loads(arguments)
                outside_strings = STRINGS.sub('""', arguments)
                assert not re.search(r"\s", outside_strings), arguments
