"""Tool-call parsers for `tool_choice="auto"` (`--enable-auto-tool-choice --tool-call-parser`).

A model that decides by itself to call a tool writes the call in its own format; the parser
named by --tool-call-parser (vLLM's names) finds the calls in the generated text. This table
is the one place a parser is named; `auto` picks one from the model's chat template.

Streaming holds back text that may be the start of a call; once a call starts, its name is
sent as soon as it is complete and its arguments as they are generated (OpenAI's tool-call
delta shape).
"""

from __future__ import annotations

from mono_llm.openai_api.chat_completion.tool_parsers.base import (
    ParsedReply,
    StreamingToolState,
    ToolParser,
)
from mono_llm.openai_api.chat_completion.tool_parsers.json_formats import (
    HermesToolParser,
    Llama3JsonToolParser,
    MistralToolParser,
)
from mono_llm.openai_api.chat_completion.tool_parsers.pythonic import PythonicToolParser
from mono_llm.openai_api.chat_completion.tool_parsers.tagged_formats import (
    DeepSeekV3ToolParser,
    Qwen3CoderToolParser,
)

TOOL_PARSERS: dict[str, type[ToolParser]] = {
    parser.name: parser
    for parser in (
        HermesToolParser,
        Llama3JsonToolParser,
        MistralToolParser,
        PythonicToolParser,
        Qwen3CoderToolParser,
        DeepSeekV3ToolParser,
    )
}

AUTO = "auto"

# What a chat template writes when it describes or replays tool calls, most specific first:
# Qwen3-Coder's XML calls also sit in <tool_call> tags, like hermes.
_TEMPLATE_SIGNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("deepseek_v3", ("<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>")),
    ("qwen3_coder", ("<function=",)),
    ("hermes", ("<tool_call>",)),
    ("mistral", ("[TOOL_CALLS]",)),
    ("pythonic", ("func_name1(", "[func_name(")),
    ("llama3_json", ("<|python_tag|>", '"parameters"')),
)


def parser_name_for_template(template: str | None) -> str | None:
    """The parser whose format the chat template speaks, or None if none is recognised."""
    if not template:
        return None
    for name, signs in _TEMPLATE_SIGNS:
        if any(sign in template for sign in signs):
            return name
    return None


def get_tool_parser(name: str) -> ToolParser:
    try:
        return TOOL_PARSERS[name]()
    except KeyError:
        raise ValueError(
            f"unknown --tool-call-parser {name!r}; choose from {', '.join(TOOL_PARSERS)} or auto"
        ) from None


__all__ = [
    "AUTO",
    "TOOL_PARSERS",
    "ParsedReply",
    "StreamingToolState",
    "ToolParser",
    "get_tool_parser",
    "parser_name_for_template",
]
