"""Tool-call formats whose calls are JSON objects `{"name": ..., "arguments": {...}}`.

- hermes (Qwen2.5/3, Hermes, many others): `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
- llama3_json (Llama 3.1+): the reply is one or more JSON objects `{"name": ..., "parameters":
  {...}}` separated by `;`, optionally after `<|python_tag|>`
- mistral: `[TOOL_CALLS]` followed by a JSON list of `{"name": ..., "arguments": {...}}`

The arguments are the raw text of the model's JSON value (the model's own spelling, non-ASCII
included), so streamed pieces add up to the unstreamed arguments.
"""

from __future__ import annotations

from mono_llm.openai_api.chat_completion.tool_parsers.base import (
    NineCharacterIds,
    PartialCall,
    ToolParser,
    partial_json_call,
)


class HermesToolParser(ToolParser):
    name = "hermes"
    markers = ("<tool_call>",)
    _OPEN, _CLOSE = "<tool_call>", "</tool_call>"

    def partial_calls(self, text: str) -> list[PartialCall]:
        calls, position = [], 0
        while True:
            start = text.find(self._OPEN, position)
            if start < 0:
                return calls
            call, end = partial_json_call(text, start + len(self._OPEN))
            if call is None:  # not an object: no call (and not a well-formed reply)
                calls.append(PartialCall(name=None, arguments=""))
                return calls
            calls.append(call)
            close = text.find(self._CLOSE, end)
            if not call.complete or close < 0:
                return calls
            if text[end:close].strip():  # something after the object inside the block
                call.complete = False
                return calls
            position = close + len(self._CLOSE)


class Llama3JsonToolParser(ToolParser):
    name = "llama3_json"
    markers = ("<|python_tag|>", "{")
    marker_only_at_start = True

    def _scan(self, text: str) -> tuple[list[PartialCall], bool]:
        """(calls, whether nothing but calls, `;` and whitespace is there)."""
        text = text.strip().removeprefix("<|python_tag|>")
        calls, position = [], 0
        while True:
            while position < len(text) and text[position] in " \t\r\n;":
                position += 1
            if position == len(text):
                return calls, True
            call, position = partial_json_call(
                text, position, argument_keys=("parameters", "arguments")
            )
            if call is None:
                return calls, False
            calls.append(call)
            if not call.complete:
                return calls, True

    def partial_calls(self, text: str) -> list[PartialCall]:
        return self._scan(text)[0]

    def final_calls(self, text: str) -> list[PartialCall] | None:
        return super().final_calls(text) if self._scan(text)[1] else None


class MistralToolParser(NineCharacterIds, ToolParser):
    name = "mistral"
    markers = ("[TOOL_CALLS]",)

    def _scan(self, text: str) -> tuple[list[PartialCall], bool]:
        text = text.removeprefix("[TOOL_CALLS]").lstrip()
        if not text.startswith("["):
            return [], False
        calls, position = [], 1
        while True:
            while position < len(text) and text[position] in " \t\r\n,":
                position += 1
            if position == len(text):
                return calls, False
            if text[position] == "]":
                return calls, not text[position + 1 :].strip()
            call, position = partial_json_call(text, position)
            if call is None:
                return calls, False
            calls.append(call)
            if not call.complete:
                return calls, False

    def partial_calls(self, text: str) -> list[PartialCall]:
        return self._scan(text)[0]

    def final_calls(self, text: str) -> list[PartialCall] | None:
        return super().final_calls(text) if self._scan(text)[1] else None
