"""Every tool-call parser on crafted replies: the unstreamed parse, and the same reply fed in
pieces of every size (content identical, name first, argument pieces adding up exactly)."""

from __future__ import annotations

import json

import pytest

from mono_llm.core.testing import chat_templates
from mono_llm.openai_api.chat_completion.tool_parsers import (
    TOOL_PARSERS,
    StreamingToolState,
    get_tool_parser,
    parser_name_for_template,
)

DS_CALL = (
    "<｜tool▁call▁begin｜>function<｜tool▁sep｜>{name}\n```json\n{args}\n```<｜tool▁call▁end｜>"
)
DEEPSEEK = (
    "Let me check.<｜tool▁calls▁begin｜>"
    + DS_CALL.format(name="get_weather", args='{"city": "Zürich"}')
    + DS_CALL.format(name="get_time", args='{"tz": "東京"}')
    + "<｜tool▁calls▁end｜>"
)
QWEN3_CODER = (
    "I will look it up.\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nSão Paulo\n"
    "</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n"
    "<function=get_time>\n<parameter=tz>\nUTC\n</parameter>\n</function>\n</tool_call>"
)
CASES = [
    # (parser, reply, content, [(name, arguments)])
    ("hermes", 'Sure thing. \n<tool_call>\n{"name": "get_weather", "arguments": '
     '{"city": "Zürich", "note": "naïve ☂"}}\n</tool_call>',
     "Sure thing.", [("get_weather", '{"city": "Zürich", "note": "naïve ☂"}')]),
    ("hermes", '<tool_call>{"arguments": {"a": [1, {"b": "}"}]}, "name": "f"}</tool_call>'
     '<tool_call>{"name": "g", "arguments": {}}</tool_call>',
     None, [("f", '{"a": [1, {"b": "}"}]}'), ("g", "{}")]),
    ("llama3_json", '{"name": "f", "parameters": {"q": "ß"}}; {"name": "g", "parameters": {}}',
     None, [("f", '{"q": "ß"}'), ("g", "{}")]),
    ("mistral", '[TOOL_CALLS] [{"name": "f", "arguments": {"x": 1}}, {"name": "g", '
     '"arguments": {"y": "é"}}]', None, [("f", '{"x": 1}'), ("g", '{"y": "é"}')]),
    ("pythonic", '[get_weather(city="Zürich", days=3), get_time(tz=\'UTC\', dst=True)]', None,
     [("get_weather", '{"city": "Zürich", "days": 3}'),
      ("get_time", '{"tz": "UTC", "dst": true}')]),
    ("qwen3_coder", QWEN3_CODER, "I will look it up.",
     [("get_weather", '{"city": "São Paulo", "days": 3}'), ("get_time", '{"tz": "UTC"}')]),
    ("deepseek_v3", DEEPSEEK, "Let me check.",
     [("get_weather", '{"city": "Zürich"}'), ("get_time", '{"tz": "東京"}')]),
]  # fmt: skip


def _streamed(parser_name: str, reply: str, size: int) -> tuple[str, list[list[str]], list]:
    state = StreamingToolState(get_tool_parser(parser_name))
    content, calls, all_deltas = "", [], []
    pieces = [reply[start : start + size] for start in range(0, len(reply), size)]
    for piece in pieces[:-1]:
        text, deltas = state.feed(piece)
        content += text
        all_deltas += deltas
    text, deltas = state.finish(pieces[-1])  # the last piece comes with the finish reason
    content += text
    all_deltas += deltas
    for delta in all_deltas:
        if "id" in delta:
            assert delta["index"] == len(calls) and delta["type"] == "function"
            assert delta["function"]["arguments"] == ""  # the name goes out first
            calls.append([delta["function"]["name"], ""])
        else:
            calls[delta["index"]][1] += delta["function"]["arguments"]
    return content, calls, all_deltas


@pytest.mark.parametrize(("name", "reply", "content", "calls"), CASES)
def test_parse_and_stream_agree(name, reply, content, calls) -> None:
    parser = get_tool_parser(name)
    parsed = parser.parse(reply)
    assert parsed.content == content
    got = [(c["function"]["name"], c["function"]["arguments"]) for c in parsed.tool_calls]
    assert got == calls
    for _, arguments in got:
        json.loads(arguments)
        assert "\\u" not in arguments  # non-ASCII kept as is
    for size in (1, 2, 3, 7, 1000):
        streamed_content, streamed_calls, deltas = _streamed(name, reply, size)
        assert streamed_content == (content or ""), size
        assert [tuple(c) for c in streamed_calls] == calls, size
        if size == 1 and name != "pythonic":
            # Arguments arrive in several pieces, not whole at the end.
            assert sum("id" not in d for d in deltas) > len(calls)


@pytest.mark.parametrize("name", sorted(TOOL_PARSERS))
def test_plain_replies_and_broken_calls_are_content(name) -> None:
    parser = get_tool_parser(name)
    for text in ("Just an answer, no tools.", "Über 9000 ☃"):
        assert parser.parse(text).tool_calls == []
        assert _streamed(name, text, 3)[:2] == (text, [])


@pytest.mark.parametrize(
    ("name", "broken"),
    [("hermes", "<tool_call>{not json</tool_call>"), ("llama3_json", '{"name": "a"} words'),
     ("mistral", '[TOOL_CALLS] [{"name": "a"'), ("pythonic", "[f(1, 2)]"),
     ("pythonic", "[ref 3] says so"), ("deepseek_v3", "<｜tool▁calls▁begin｜>oops"),
     ("qwen3_coder", "<tool_call><function=f><parameter=a>1")],
)  # fmt: skip
def test_malformed_calls_fall_back_to_content(name, broken) -> None:
    parser = get_tool_parser(name)
    parsed = parser.parse(broken)
    assert parsed.tool_calls == [] and parsed.content == broken
    content, calls, _ = _streamed(name, broken, 1000)
    if calls:
        # A name already streamed cannot be taken back: the call ends as it was cut.
        assert content == "" and all(isinstance(c[0], str) and c[0] for c in calls)
    else:
        assert content == broken
    content, calls, _ = _streamed(name, broken, len(broken))  # whole at once, at the end
    assert (content, calls) == (broken, [])


def test_auto_picks_the_parser_from_the_chat_template() -> None:
    assert parser_name_for_template(chat_templates.LLAMA3) == "llama3_json"
    assert parser_name_for_template(chat_templates.CHATML) is None
    assert parser_name_for_template("{{ '<tool_call>' }}{{ tool_call | tojson }}") == "hermes"
    qwen3_coder = "<tool_call>\n<function={{ name }}>\n<parameter={{ key }}>"
    assert parser_name_for_template(qwen3_coder) == "qwen3_coder"
    assert parser_name_for_template("{{ '[TOOL_CALLS]' }}") == "mistral"
    assert parser_name_for_template("<｜tool▁calls▁begin｜>") == "deepseek_v3"
    assert parser_name_for_template("[func_name1(params_name1=params_value1)]") == "pythonic"
