"""Forced tool choice: the schema it constrains generation to and reading the calls back."""

from __future__ import annotations

import json

import pytest

from mono_llm.openai_api.chat_completion.protocol import ChatCompletionRequest
from mono_llm.openai_api.chat_completion.tool_choice import forced_tool_choice
from mono_llm.openai_api.errors import OpenAIError

TOOLS = [
    {"type": "function", "function": {"name": "a", "parameters": {"type": "object",
     "properties": {"x": {"type": "integer"}}}}},
    {"type": "function", "function": {"name": "b"}},
]  # fmt: skip


def _request(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest(messages=[{"role": "user", "content": "x"}], **fields)


def test_auto_and_none_do_not_constrain() -> None:
    assert forced_tool_choice(_request(tools=TOOLS)) is None
    assert forced_tool_choice(_request(tools=TOOLS, tool_choice="auto")) is None
    assert forced_tool_choice(_request()) is None


def test_named_function_uses_its_parameters() -> None:
    forced = forced_tool_choice(
        _request(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "a"}})
    )
    assert forced.mode == "named" and forced.schema == TOOLS[0]["function"]["parameters"]
    (call,) = forced.tool_calls('{"x": 3}')
    assert call["function"] == {"name": "a", "arguments": '{"x": 3}'}
    assert forced.tool_calls('{"x": ') is None  # cut short by max_tokens
    no_params = forced_tool_choice(
        _request(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "b"}})
    )
    assert no_params.schema == {"type": "object", "properties": {}}


def test_required_is_a_list_of_calls_to_any_tool() -> None:
    forced = forced_tool_choice(_request(tools=TOOLS, tool_choice="required"))
    assert forced.schema["type"] == "array" and forced.schema["minItems"] == 1
    names = [alt["properties"]["name"]["enum"] for alt in forced.schema["items"]["anyOf"]]
    assert names == [["a"], ["b"]]
    calls = forced.tool_calls(
        '[{"name": "a", "parameters": {"x": 1}}, {"name": "b", "parameters": {}}]'
    )
    assert [c["function"]["name"] for c in calls] == ["a", "b"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"x": 1}
    assert len({c["id"] for c in calls}) == 2


def test_invalid_tool_choices_are_400s() -> None:
    with pytest.raises(OpenAIError) as info:
        forced_tool_choice(_request(tool_choice="required"))
    assert info.value.param == "tools"
    with pytest.raises(OpenAIError) as info:
        forced_tool_choice(
            _request(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "zzz"}})
        )
    assert info.value.param == "tool_choice"
    with pytest.raises(OpenAIError):
        forced_tool_choice(_request(tools=[{"type": "retrieval"}], tool_choice="required"))
