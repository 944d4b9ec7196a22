"""Structured outputs and forced tool calls through the API (grammar-enforced by the engine).

The fixture model has random weights, so JSON outputs are steered away from endless
whitespace (which a JSON grammar allows) by a logit_bias on pure-whitespace tokens; the
grammar alone decides everything else.
"""

from __future__ import annotations

import json
import re

import openai
import pytest
from transformers import AutoTokenizer

from mono_llm.core.testing import fixture_path

LLAMA = "tiny-llama"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {
            "type": "object",
            "properties": {"unit": {"enum": ["c", "f"]}, "city": {"enum": ["Paris", "Oslo"]}},
            "required": ["unit", "city"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"tz": {"enum": ["UTC"]}},
                       "required": ["tz"], "additionalProperties": False},
    },
}  # fmt: skip
# One small argument: the random model closes the JSON list within a few hundred tokens.
UNIT = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"unit": {"enum": ["c", "f"]}},
                       "required": ["unit"], "additionalProperties": False},
    },
}  # fmt: skip
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def no_whitespace() -> dict[str, int]:
    tokenizer = AutoTokenizer.from_pretrained(fixture_path(LLAMA))
    return {str(i): -100 for i in range(len(tokenizer)) if not tokenizer.decode([i]).strip()}


def test_structured_outputs_choice_regex_and_json_schema(client, no_whitespace) -> None:
    # vLLM's quick-start example of structured outputs through extra_body.
    choice = client.chat.completions.create(
        model=LLAMA,
        messages=[{"role": "user", "content": "Classify this sentiment: vLLM is wonderful!"}],
        extra_body={"structured_outputs": {"choice": ["positive", "negative"]}},
    )
    assert choice.choices[0].message.content in ("positive", "negative")
    legacy = client.completions.create(
        model=LLAMA, prompt="Answer:", max_tokens=10, extra_body={"guided_choice": ["yes", "no"]}
    )
    assert legacy.choices[0].text in ("yes", "no")
    regex = client.completions.create(
        model=LLAMA, prompt="A number:", max_tokens=10, extra_body={"guided_regex": "[0-9]{3}"}
    )
    assert re.fullmatch("[0-9]{3}", regex.choices[0].text)
    schema = WEATHER["function"]["parameters"]
    structured = client.chat.completions.create(
        model=LLAMA,
        messages=MESSAGES,
        max_tokens=400,
        temperature=0,
        logit_bias=no_whitespace,
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": schema}},
    )
    assert structured.choices[0].finish_reason == "stop", structured.choices[0].message.content
    parsed = json.loads(structured.choices[0].message.content)
    assert parsed["unit"] in ("c", "f") and parsed["city"] in ("Paris", "Oslo")


def test_named_tool_choice(client, no_whitespace) -> None:
    response = client.chat.completions.create(
        model=LLAMA,
        messages=MESSAGES,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=400,
        temperature=0,
        logit_bias=no_whitespace,
    )
    (call,) = response.choices[0].message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert call.id.startswith("chatcmpl-tool-")
    arguments = json.loads(call.function.arguments)
    assert arguments["unit"] in ("c", "f") and arguments["city"] in ("Paris", "Oslo")

    stream = client.chat.completions.create(
        model=LLAMA,
        messages=MESSAGES,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=400,
        temperature=0,
        logit_bias=no_whitespace,
        stream=True,
    )
    names, pieces, finish = [], [], None
    for chunk in stream:
        choice = chunk.choices[0]
        for delta in choice.delta.tool_calls or []:
            if delta.function.name:
                names.append(delta.function.name)
            pieces.append(delta.function.arguments or "")
        finish = choice.finish_reason or finish
    assert names == ["get_weather"] and finish == "stop"
    assert json.loads("".join(pieces)) == arguments  # streamed = whole, greedy


def test_required_tool_choice(client, no_whitespace) -> None:
    response = client.chat.completions.create(
        model=LLAMA,
        messages=MESSAGES,
        tools=[UNIT],
        tool_choice="required",
        max_tokens=400,
        temperature=0,
        logit_bias=no_whitespace,
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments)["unit"] in ("c", "f")


def test_tool_choice_errors(client) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=LLAMA,
            messages=MESSAGES,
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "launch_rocket"}},
        )
    assert info.value.body["param"] == "tool_choice"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=LLAMA, messages=MESSAGES, tool_choice="required")


# A reply in the hermes tool-call format, forced by a regex so the random model writes it.
HERMES_REPLY = (
    r'Let me check\.<tool_call>\{"name": "get_weather", "arguments": \{"unit": "c"\}\}</tool_call>'
)


def test_auto_tool_choice_parses_hermes_tool_calls(client) -> None:
    response = client.chat.completions.create(
        model=LLAMA,
        messages=MESSAGES,
        tools=[UNIT],
        max_tokens=200,
        extra_body={"structured_outputs": {"regex": HERMES_REPLY}},
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"unit": "c"}

    stream = client.chat.completions.create(
        model=LLAMA,
        messages=MESSAGES,
        tools=[UNIT],
        max_tokens=200,
        stream=True,
        extra_body={"structured_outputs": {"regex": HERMES_REPLY}},
    )
    content, calls, finish = [], [], None
    for chunk in stream:
        delta = chunk.choices[0].delta
        content.append(delta.content or "")
        calls.extend(delta.tool_calls or [])
        finish = chunk.choices[0].finish_reason or finish
    assert "".join(content) == "Let me check."  # no tool-call markup leaks into content
    # The name first (with the id), then the arguments in pieces as they are generated.
    assert [c.function.name for c in calls if c.id] == ["get_weather"] and finish == "tool_calls"
    assert json.loads("".join(c.function.arguments or "" for c in calls)) == {"unit": "c"}
    # tool_choice "none": the same text stays content.
    plain = client.chat.completions.create(
        model=LLAMA,
        messages=MESSAGES,
        tools=[UNIT],
        tool_choice="none",
        max_tokens=200,
        extra_body={"structured_outputs": {"regex": HERMES_REPLY}},
    )
    assert plain.choices[0].message.content.startswith("Let me check.<tool_call>")
    assert not plain.choices[0].message.tool_calls
