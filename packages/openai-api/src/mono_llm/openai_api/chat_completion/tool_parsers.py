"""Tool-call parsers for `tool_choice="auto"` (`--enable-auto-tool-choice --tool-call-parser`).

A model that decides by itself to call a tool writes the call in its own format; the parser
named by --tool-call-parser (vLLM's names) finds the calls in the generated text:

- hermes (Qwen2.5/3, Hermes, many others): `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
- llama3_json (Llama 3.1+): the reply is one or more JSON objects `{"name": ..., "parameters":
  {...}}` separated by `;`, optionally after `<|python_tag|>`
- mistral: `[TOOL_CALLS]` followed by a JSON list of `{"name": ..., "arguments": {...}}`

Streaming holds back text that may be the start of a call; once a call starts, the rest is
buffered and sent as `tool_calls` when generation ends (a call is only useful whole).
"""

from __future__ import annotations

import json
import re
import secrets
import string
from dataclasses import dataclass, field
from typing import Any

from mono_llm.openai_api.chat_completion.tool_choice import new_tool_call_id

_DECODER = json.JSONDecoder()
_ALNUM = string.ascii_letters + string.digits


@dataclass(slots=True)
class ParsedReply:
    content: str | None
    tool_calls: list[dict[str, Any]]


def _call(name: Any, arguments: Any) -> dict[str, Any] | None:
    if not isinstance(name, str) or not name:
        return None
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)
    return {"id": new_tool_call_id(), "type": "function",
            "function": {"name": name, "arguments": arguments}}  # fmt: skip


def _json_objects(text: str) -> list[Any] | None:
    """Consecutive JSON values separated by whitespace or `;`; None if anything else is left."""
    values, position = [], 0
    while True:
        while position < len(text) and text[position] in " \t\r\n;":
            position += 1
        if position == len(text):
            return values
        try:
            value, position = _DECODER.raw_decode(text, position)
        except json.JSONDecodeError:
            return None
        values.append(value)


class ToolParser:
    """Finds tool calls in a finished reply; subclasses define the format."""

    name = ""
    markers: tuple[str, ...] = ()  # text that starts a call
    marker_only_at_start = False  # llama3_json: a reply that *is* JSON, not JSON mid-text

    def find_start(self, text: str) -> int | None:
        """Index where a tool call starts in `text`, or None."""
        if self.marker_only_at_start:
            stripped = len(text) - len(text.lstrip())
            rest = text[stripped:]
            return stripped if any(rest.startswith(m) for m in self.markers) else None
        found = [i for i in (text.find(m) for m in self.markers) if i >= 0]
        return min(found) if found else None

    def holdback(self, text: str) -> int:
        """How many trailing characters might still become a marker (not to stream yet)."""
        if self.marker_only_at_start:
            return len(text) if not text.strip() else 0
        longest = 0
        for marker in self.markers:
            for size in range(min(len(marker) - 1, len(text)), 0, -1):
                if text.endswith(marker[:size]):
                    longest = max(longest, size)
                    break
        return longest

    def parse(self, text: str) -> ParsedReply:
        start = self.find_start(text)
        if start is None:
            return ParsedReply(content=text, tool_calls=[])
        calls = self._parse_calls(text[start:])
        if not calls:  # not a well-formed call after all: plain content
            return ParsedReply(content=text, tool_calls=[])
        content = text[:start].strip()
        return ParsedReply(content=content or None, tool_calls=calls)

    def _parse_calls(self, text: str) -> list[dict[str, Any]]:
        raise NotImplementedError


class HermesToolParser(ToolParser):
    name = "hermes"
    markers = ("<tool_call>",)
    _BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)

    def _parse_calls(self, text: str) -> list[dict[str, Any]]:
        calls = []
        for body in self._BLOCK.findall(text):
            try:
                value = json.loads(body)
            except json.JSONDecodeError:
                return []
            if not isinstance(value, dict):  # as the other parsers: only an object is a call
                return []
            call = _call(value.get("name"), value.get("arguments", value.get("parameters")))
            if call is None:
                return []
            calls.append(call)
        return calls


class Llama3JsonToolParser(ToolParser):
    name = "llama3_json"
    markers = ("<|python_tag|>", "{")
    marker_only_at_start = True

    def _parse_calls(self, text: str) -> list[dict[str, Any]]:
        values = _json_objects(text.strip().removeprefix("<|python_tag|>"))
        calls = []
        for value in values or []:
            if not isinstance(value, dict):
                return []
            call = _call(value.get("name"), value.get("parameters", value.get("arguments")))
            if call is None:
                return []
            calls.append(call)
        return calls


class MistralToolParser(ToolParser):
    name = "mistral"
    markers = ("[TOOL_CALLS]",)

    def _parse_calls(self, text: str) -> list[dict[str, Any]]:
        values = _json_objects(text.removeprefix("[TOOL_CALLS]"))
        if not values or not isinstance(values[0], list):
            return []
        calls = []
        for value in values[0]:
            call = (
                _call(value.get("name"), value.get("arguments"))
                if isinstance(value, dict)
                else None
            )
            if call is None:
                return []
            # Mistral's chat templates refuse tool-call ids that are not 9 alphanumerics
            # when the call comes back in the next turn (vLLM makes such ids too).
            call["id"] = "".join(secrets.choice(_ALNUM) for _ in range(9))
            calls.append(call)
        return calls


TOOL_PARSERS: dict[str, type[ToolParser]] = {
    parser.name: parser for parser in (HermesToolParser, Llama3JsonToolParser, MistralToolParser)
}


def get_tool_parser(name: str) -> ToolParser:
    try:
        return TOOL_PARSERS[name]()
    except KeyError:
        raise ValueError(
            f"unknown --tool-call-parser {name!r}; choose from {', '.join(TOOL_PARSERS)}"
        ) from None


@dataclass(slots=True)
class StreamingToolState:
    """One choice's streaming state: what was sent as content, and whether a call started."""

    parser: ToolParser
    text: str = ""
    sent: int = 0  # characters of `text` already streamed as content
    in_call: bool = False
    pending: list[str] = field(default_factory=list)

    def feed(self, delta: str) -> str:
        """Content that can be streamed now."""
        self.text += delta
        if self.in_call:
            return ""
        start = self.parser.find_start(self.text)
        if start is not None:
            self.in_call = True
            out = self.text[self.sent : start]
            if not out.strip():  # only whitespace before the call: not worth a content delta
                return ""
            self.sent = start
            return out
        end = len(self.text) - self.parser.holdback(self.text)
        out = self.text[self.sent : end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return out

    def finish(self) -> tuple[str, list[dict[str, Any]]]:
        """(content still to send, tool calls) when generation ends."""
        if not self.in_call:
            rest, self.sent = self.text[self.sent :], len(self.text)
            return rest, []
        parsed = self.parser.parse(self.text)
        if not parsed.tool_calls:
            rest, self.sent = self.text[self.sent :], len(self.text)
            return rest, []
        return "", parsed.tool_calls
