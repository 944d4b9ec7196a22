"""Tool-call parsers for tool_choice auto: whole replies and streamed deltas."""

from __future__ import annotations

import json
import re

import pytest

from mono_llm.openai_api.chat_completion.tool_parsers import StreamingToolState, get_tool_parser


def _calls(reply):
    return [
        (c["function"]["name"], json.loads(c["function"]["arguments"])) for c in reply.tool_calls
    ]


def test_hermes() -> None:
    parser = get_tool_parser("hermes")
    reply = parser.parse(
        'Sure.\n<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n'
        '<tool_call>{"name": "b", "arguments": {}}</tool_call>'
    )
    assert reply.content == "Sure." and _calls(reply) == [("a", {"x": 1}), ("b", {})]
    assert parser.parse("no calls here").tool_calls == []
    broken = parser.parse("<tool_call>{not json</tool_call>")
    assert broken.tool_calls == [] and broken.content == "<tool_call>{not json</tool_call>"
    # JSON that is not an object is no call either (it raised AttributeError: a 500).
    for body in ("[1]", '"a"', "3"):
        not_object = parser.parse(f"<tool_call>{body}</tool_call>")
        assert (
            not_object.tool_calls == [] and not_object.content == f"<tool_call>{body}</tool_call>"
        )


def test_llama3_json() -> None:
    parser = get_tool_parser("llama3_json")
    reply = parser.parse('{"name": "a", "parameters": {"x": 2}}; {"name": "b", "parameters": {}}')
    assert reply.content is None and _calls(reply) == [("a", {"x": 2}), ("b", {})]
    tagged = parser.parse('<|python_tag|>{"name": "a", "arguments": {"y": true}}')
    assert _calls(tagged) == [("a", {"y": True})]
    # JSON in the middle of prose is not a call for this format.
    assert parser.parse('Here: {"name": "a", "parameters": {}}').tool_calls == []
    assert parser.parse('{"name": "a", "parameters": {}} trailing words').tool_calls == []


def test_mistral() -> None:
    parser = get_tool_parser("mistral")
    reply = parser.parse('[TOOL_CALLS] [{"name": "a", "arguments": {"z": "q"}}]')
    assert _calls(reply) == [("a", {"z": "q"})]
    # 9 alphanumerics: what Mistral's chat templates accept back in the next turn.
    assert re.fullmatch("[A-Za-z0-9]{9}", reply.tool_calls[0]["id"])
    with pytest.raises(ValueError):
        get_tool_parser("nonexistent")


def test_streaming_holds_back_a_possible_marker() -> None:
    state = StreamingToolState(get_tool_parser("hermes"))
    out = [
        state.feed(piece)
        for piece in [
            "Hello <to",
            "ol_c",
            "all>",
            '{"name": "a", ',
            '"arguments": {}}',
            "</tool_call>",
        ]
    ]
    assert "".join(content for content, _ in out) == "Hello"
    assert out[0][0] == "Hello"  # "<to" held back: it may start a call (and " " may end it)
    assert out[3][1][0]["function"] == {"name": "a", "arguments": ""}  # the name first
    assert out[4][1] == [{"index": 0, "function": {"arguments": "{}"}}]
    assert state.finish() == ("", []) and state.called

    plain = StreamingToolState(get_tool_parser("hermes"))
    pieces = [plain.feed(p)[0] for p in ["a <", "b", " c"]]
    assert pieces == ["a", " <b", " c"]  # released once it cannot be a marker
    assert plain.finish() == ("", [])


def test_streaming_unparsable_call_falls_back_to_content() -> None:
    state = StreamingToolState(get_tool_parser("llama3_json"))
    assert state.feed("  ") == ("", [])  # leading whitespace: a JSON call may still follow
    assert state.feed('{"nam') == ("", [])  # no complete name yet: nothing sent
    rest, calls = state.finish()  # cut by max_tokens: not a call after all
    assert calls == [] and rest == '  {"nam'
