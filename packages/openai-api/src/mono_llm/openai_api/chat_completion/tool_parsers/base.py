"""What every tool-call parser shares: finding where calls start, reading calls that may be
partial (so streaming sends the name first and then argument pieces as they are generated),
and the streaming state that turns a growing reply into content and tool-call deltas.

A parser's `partial_calls(text)` returns, for the call region of a reply (`text` starts at
the first marker), each call it can see so far as (name or None, arguments so far). The
arguments it returns for an unfinished reply are always a prefix of what it returns for the
finished one, so the deltas a stream sends add up to the unstreamed `arguments` exactly.
"""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import dataclass, field
from typing import Any

from mono_llm.openai_api.chat_completion.tool_choice import new_tool_call_id

_ALNUM = string.ascii_letters + string.digits


@dataclass(slots=True)
class ParsedReply:
    content: str | None
    tool_calls: list[dict[str, Any]]


@dataclass(slots=True)
class PartialCall:
    name: str | None  # None until the whole name has been generated
    arguments: str  # the arguments text so far (JSON once complete)
    complete: bool = False


def arguments_json(value: Any) -> str:
    """JSON text of parsed arguments: non-ASCII kept as is (no \\u escapes)."""
    return json.dumps(value if value is not None else {}, ensure_ascii=False)


def bracket_end(
    text: str, position: int, *, depth: int = 0, quotes: str = '"', brackets: str = "{[}]"
) -> int | None:
    """Index after the bracket that brings `depth` back to zero, scanning from `position`
    (quoted text, with backslash escapes, is skipped), or None while it is unfinished.
    `brackets` is the openers then the closers, each half in the same order."""
    half = len(brackets) // 2
    opens, closes = brackets[:half], brackets[half:]
    quote, escaped = "", False
    for index in range(position, len(text)):
        char = text[index]
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = ""
        elif char in quotes:
            quote = char
        elif char in opens:
            depth += 1
        elif char in closes:
            depth -= 1
            if depth == 0:
                return index + 1
    return None


def scan_json_value(text: str, position: int) -> int | None:
    """End index of the JSON value starting at `position`, or None while it is unfinished
    (a scalar counts as finished once a delimiter follows it)."""
    if position >= len(text):
        return None
    first = text[position]
    if first in "{[":
        return bracket_end(text, position)
    if first == '"':
        escaped = False
        for index in range(position + 1, len(text)):
            char = text[index]
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                return index + 1
        return None
    index = position
    while index < len(text) and text[index] not in ",}] \t\r\n":
        index += 1
    return index if index < len(text) else None


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def partial_json_call(
    text: str,
    position: int,
    name_keys: tuple[str, ...] = ("name",),
    argument_keys: tuple[str, ...] = ("arguments", "parameters"),
) -> tuple[PartialCall | None, int]:
    """Read a `{"name": ..., "arguments": {...}}` object that may be unfinished.

    Returns (call or None if `text[position]` does not open an object, end index). The
    arguments are the raw text of their value, so a growing reply only ever extends them.
    """
    position = _skip_space(text, position)
    if position >= len(text) or text[position] != "{":
        return None, position
    call = PartialCall(name=None, arguments="")
    position += 1
    while True:
        position = _skip_space(text, position)
        if position >= len(text):
            return call, position
        if text[position] == "}":
            call.complete = call.name is not None
            return call, position + 1
        if text[position] == ",":
            position += 1
            continue
        key_end = scan_json_value(text, position)
        if key_end is None or text[position] != '"':
            return call, len(text)
        key = json.loads(text[position:key_end])
        position = _skip_space(text, key_end)
        if position >= len(text):
            return call, position
        if text[position] != ":":
            return call, len(text)
        position = _skip_space(text, position + 1)
        value_end = scan_json_value(text, position)
        if key in argument_keys:
            if text[position : position + 1] == '"':  # arguments given as a JSON string
                if value_end is not None:
                    decoded = json.loads(text[position:value_end])
                    call.arguments = decoded if isinstance(decoded, str) else ""
            else:
                call.arguments = text[position : value_end if value_end is not None else None]
        elif key in name_keys and value_end is not None:
            name = json.loads(text[position:value_end])
            call.name = name if isinstance(name, str) else None
        if value_end is None:
            return call, len(text)
        position = value_end


class ToolParser:
    """Finds tool calls in a reply; subclasses define the format."""

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

    def new_call_id(self) -> str:
        return new_tool_call_id()

    def partial_calls(self, text: str) -> list[PartialCall]:
        """The calls seen so far in the call region `text` (see the module docstring)."""
        raise NotImplementedError

    def final_calls(self, text: str) -> list[PartialCall] | None:
        """The calls of a finished call region, or None if it is not well-formed."""
        calls = self.partial_calls(text)
        if not calls or not all(c.complete and c.name for c in calls):
            return None
        for call in calls:
            try:
                if not isinstance(json.loads(call.arguments or "{}"), dict):
                    return None
            except json.JSONDecodeError:
                return None
        return calls

    def parse(self, text: str) -> ParsedReply:
        start = self.find_start(text)
        calls = self.final_calls(text[start:]) if start is not None else None
        if start is None or calls is None:  # no well-formed call: plain content
            return ParsedReply(content=text, tool_calls=[])
        content = text[:start].rstrip()
        return ParsedReply(
            content=content or None,
            tool_calls=[
                {"id": self.new_call_id(), "type": "function",
                 "function": {"name": c.name, "arguments": c.arguments or "{}"}}
                for c in calls
            ],
        )  # fmt: skip


class NineCharacterIds:
    """Mistral's chat templates refuse tool-call ids that are not 9 alphanumerics when the
    call comes back in the next turn (vLLM makes such ids too)."""

    def new_call_id(self) -> str:
        return "".join(secrets.choice(_ALNUM) for _ in range(9))


@dataclass(slots=True)
class _SentCall:
    id: str
    name: str
    arguments: int = 0  # characters of the arguments already sent


@dataclass(slots=True)
class StreamingToolState:
    """One choice's streaming state: content until a call starts, then OpenAI tool-call
    deltas: `{index, id, type, function: {name, arguments: ""}}` first, then
    `{index, function: {arguments: piece}}` as the arguments grow.

    Content is the same as unstreamed: trailing whitespace is held back until something
    else follows it (the text before a call loses it, as `parse` does).
    """

    parser: ToolParser
    text: str = ""
    sent: int = 0  # characters of `text` already streamed as content
    start: int | None = None  # where the call region begins
    calls: list[_SentCall] = field(default_factory=list)

    def feed(self, delta: str) -> tuple[str, list[dict[str, Any]]]:
        """(content, tool-call deltas) that can be sent now."""
        self.text += delta
        if self.start is None:
            start = self.parser.find_start(self.text)
            if start is None:
                end = len(self.text) - self.parser.holdback(self.text)
                end = len(self.text[:end].rstrip())
                out = self.text[self.sent : end] if end > self.sent else ""
                self.sent = max(self.sent, end)
                return out, []
            self.start = start
            out = self.text[self.sent : start].rstrip() if start > self.sent else ""
            self.sent += len(out)
            return out, self._deltas(self.parser.partial_calls(self.text[start:]))
        return "", self._deltas(self.parser.partial_calls(self.text[self.start :]))

    def finish(self, delta: str = "") -> tuple[str, list[dict[str, Any]]]:
        """(content, tool-call deltas) still to send when generation ends; `delta` is the
        last piece of text (read whole: a call it completes is not sent half first)."""
        self.text += delta
        if self.start is None:
            self.start = self.parser.find_start(self.text)
            if self.start is not None:
                calls = self.parser.final_calls(self.text[self.start :])
                if calls is None:
                    self.start = None  # no call after all: everything left is content
                else:
                    out = self.text[self.sent : self.start].rstrip()
                    self.sent += len(out)
                    return out, self._final_deltas(calls)
        if self.start is None:
            rest, self.sent = self.text[self.sent :], len(self.text)
            return rest, []
        calls = self.parser.final_calls(self.text[self.start :])
        if calls is None:
            if not self.calls:  # nothing sent as a call: the rest is content after all
                rest, self.sent = self.text[self.sent :], len(self.text)
                return rest, []
            return "", []
        return "", self._final_deltas(calls)

    def _final_deltas(self, calls: list[PartialCall]) -> list[dict[str, Any]]:
        for call in calls:
            call.arguments = call.arguments or "{}"
        return self._deltas(calls)

    @property
    def called(self) -> bool:
        return bool(self.calls)

    def _deltas(self, partial: list[PartialCall]) -> list[dict[str, Any]]:
        deltas = []
        for index, call in enumerate(partial):
            if index == len(self.calls):
                if call.name is None:
                    break
                sent = _SentCall(self.parser.new_call_id(), call.name)
                self.calls.append(sent)
                deltas.append({"index": index, "id": sent.id, "type": "function",
                               "function": {"name": call.name, "arguments": ""}})  # fmt: skip
            sent = self.calls[index]
            if len(call.arguments) > sent.arguments:
                piece = call.arguments[sent.arguments :]
                sent.arguments = len(call.arguments)
                deltas.append({"index": index, "function": {"arguments": piece}})
        return deltas
