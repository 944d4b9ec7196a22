"""Tool-call formats framed by tags rather than JSON objects.

- deepseek_v3 (DeepSeek V3 / R1): `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME`
  then the arguments in a json code fence and `<｜tool▁call▁end｜>`, one block per call, closed
  by `<｜tool▁calls▁end｜>`.
- qwen3_coder (Qwen3-Coder, XML style): `<tool_call><function=NAME><parameter=KEY>VALUE
  </parameter>...</function></tool_call>`. Parameter values are text; a value that reads as
  JSON (a number, true/false/null, an object or a list) is taken as that JSON value, any
  other as a string. The arguments grow one parameter at a time.
"""

from __future__ import annotations

import json
from typing import Any

from mono_llm.openai_api.chat_completion.tool_parsers.base import (
    PartialCall,
    ToolParser,
    arguments_json,
)


def _held(text: str, marker: str) -> int:
    """Characters at the end of `text` that may be the start of `marker`."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:size]):
            return size
    return 0


class DeepSeekV3ToolParser(ToolParser):
    name = "deepseek_v3"
    markers = ("<｜tool▁calls▁begin｜>",)
    _CALL, _SEP, _END = "<｜tool▁call▁begin｜>", "<｜tool▁sep｜>", "<｜tool▁call▁end｜>"
    _FENCE_OPEN, _FENCE_CLOSE = "\n```json\n", "\n```"

    def partial_calls(self, text: str) -> list[PartialCall]:
        calls, position = [], 0
        while True:
            begin = text.find(self._CALL, position)
            if begin < 0:
                return calls
            sep = text.find(self._SEP, begin)
            if sep < 0:
                return calls
            fence = text.find(self._FENCE_OPEN, sep)
            if fence < 0:
                return calls
            name = text[sep + len(self._SEP) : fence].strip()
            body_start = fence + len(self._FENCE_OPEN)
            close = text.find(self._FENCE_CLOSE, body_start)
            if close < 0:
                body = text[body_start:]
                calls.append(PartialCall(name, body[: len(body) - _held(body, self._FENCE_CLOSE)]))
                return calls
            end = text.find(self._END, close)
            calls.append(PartialCall(name, text[body_start:close], complete=end >= 0))
            if end < 0:
                return calls
            position = end + len(self._END)


def _parameter_value(raw: str) -> Any:
    value = raw.removeprefix("\n").removesuffix("\n")
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    return value if isinstance(parsed, str) else parsed


class Qwen3CoderToolParser(ToolParser):
    name = "qwen3_coder"
    markers = ("<tool_call>",)

    def partial_calls(self, text: str) -> list[PartialCall]:
        calls: list[PartialCall] = []
        position = 0
        while True:
            start = text.find("<function=", position)
            if start < 0:
                return calls
            name_end = text.find(">", start)
            if name_end < 0:
                return calls
            name = text[start + len("<function=") : name_end].strip()
            pieces, position = [], name_end + 1
            function_end = text.find("</function>", position)
            region = text[position : function_end if function_end >= 0 else None]
            cursor = 0
            while True:
                open_at = region.find("<parameter=", cursor)
                if open_at < 0:
                    break
                key_end = region.find(">", open_at)
                close_at = region.find("</parameter>", key_end) if key_end >= 0 else -1
                if close_at < 0:
                    break
                key = region[open_at + len("<parameter=") : key_end].strip()
                value = _parameter_value(region[key_end + 1 : close_at])
                pieces.append(f"{json.dumps(key, ensure_ascii=False)}: {arguments_json(value)}")
                cursor = close_at + len("</parameter>")
            arguments = "{" + ", ".join(pieces)
            if function_end < 0:
                calls.append(PartialCall(name, arguments))
                return calls
            calls.append(PartialCall(name, arguments + "}", complete=True))
            position = function_end + len("</function>")
