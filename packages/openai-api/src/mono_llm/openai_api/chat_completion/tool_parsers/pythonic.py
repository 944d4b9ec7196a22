"""The pythonic tool-call format (Llama 3.2 / Llama 4 and others): the reply is a Python list
of calls with keyword arguments, `[get_weather(city="Paris"), get_time(tz="UTC")]`.

Values are Python literals (strings, numbers, True/False/None, lists, dicts); they become
JSON arguments. Streaming sends a call's name as soon as `name(` is written and its
arguments once its closing parenthesis is (a Python literal is not JSON until it is whole).
"""

from __future__ import annotations

import ast
import re

from mono_llm.openai_api.chat_completion.tool_parsers.base import (
    PartialCall,
    ToolParser,
    arguments_json,
    bracket_end,
)

_NAME = re.compile(r"\s*([A-Za-z_][\w.]*)\s*\(")


def _call_arguments(source: str) -> str | None:
    """JSON arguments of one `name(k=v, ...)` call, or None if it is not such a call."""
    try:
        node = ast.parse(source.strip(), mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(node, ast.Call) or node.args:
        return None
    try:
        values = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}
    except ValueError:
        return None
    if len(values) != len(node.keywords):  # **kwargs
        return None
    return arguments_json(values)


class PythonicToolParser(ToolParser):
    name = "pythonic"
    markers = ("[",)
    marker_only_at_start = True

    def _scan(self, text: str) -> tuple[list[PartialCall], bool]:
        """(calls, whether the text is exactly a closed list of calls)."""
        text = text.strip()
        calls: list[PartialCall] = []
        position = 1  # after "["
        while True:
            while position < len(text) and text[position] in " \t\r\n,":
                position += 1
            if position >= len(text):
                return calls, False
            if text[position] == "]":
                return calls, position == len(text) - 1
            match = _NAME.match(text, position)
            if match is None:
                return calls, False
            end = self._call_end(text, match.end())
            if end is None:
                calls.append(PartialCall(match.group(1), ""))
                return calls, False
            arguments = _call_arguments(text[position:end])
            if arguments is None:
                calls.append(PartialCall(match.group(1), ""))
                return calls, False
            calls.append(PartialCall(match.group(1), arguments, complete=True))
            position = end

    @staticmethod
    def _call_end(text: str, position: int) -> int | None:
        """Index after the `)` that closes the call whose `(` ends before `position`."""
        return bracket_end(text, position, depth=1, quotes="'\"", brackets="([{)]}")

    def partial_calls(self, text: str) -> list[PartialCall]:
        return self._scan(text)[0]

    def final_calls(self, text: str) -> list[PartialCall] | None:
        return super().final_calls(text) if self._scan(text)[1] else None
