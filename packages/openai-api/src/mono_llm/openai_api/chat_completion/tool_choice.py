"""Forced tool calls: `tool_choice` = a named function or "required", grammar-enforced.

The model's output is constrained by a JSON schema (structured outputs), so it can only be
a valid call: the function's arguments for a named function, or a non-empty JSON list of
`{"name", "parameters"}` objects for "required" (vLLM's encoding). The API turns that text
into OpenAI `tool_calls`. "auto" and "none" pass the tools to the chat template only.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from mono_llm.openai_api.chat_completion.protocol import ChatCompletionRequest
from mono_llm.openai_api.errors import OpenAIError


def new_tool_call_id() -> str:
    return f"chatcmpl-tool-{uuid.uuid4().hex}"


def _functions(request: ChatCompletionRequest) -> dict[str, dict[str, Any]]:
    functions = {}
    for i, tool in enumerate(request.tools or []):
        function = tool.get("function") if isinstance(tool, dict) else None
        if tool.get("type", "function") != "function" or not isinstance(function, dict):
            raise OpenAIError(
                "Only tools of type 'function' with a 'function' object are supported.",
                400,
                param=f"tools.{i}",
            )
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise OpenAIError("Every tool function needs a name.", 400, param=f"tools.{i}")
        functions[name] = function
    return functions


def _parameters_schema(function: dict[str, Any]) -> dict[str, Any]:
    return function.get("parameters") or {"type": "object", "properties": {}}


@dataclass(slots=True)
class ForcedToolChoice:
    """What a forced tool choice constrains generation to, and how to read the result."""

    mode: str  # "named" | "required"
    schema: dict[str, Any]
    function_name: str | None = None  # for "named"

    def tool_calls(self, text: str) -> list[dict[str, Any]] | None:
        """OpenAI tool_calls from the constrained output; None if it is not complete JSON
        (generation cut by max_tokens)."""
        if self.mode == "named":
            try:
                json.loads(text)
            except json.JSONDecodeError:
                return None
            return [self._call(self.function_name or "", text.strip())]
        try:
            calls = json.loads(text)
        except json.JSONDecodeError:
            return None
        if not isinstance(calls, list):
            return None
        return [
            self._call(
                str(call.get("name")),
                json.dumps(call.get("parameters", {}), ensure_ascii=False, separators=(",", ":")),
            )
            for call in calls
            if isinstance(call, dict)
        ]

    @staticmethod
    def _call(name: str, arguments: str) -> dict[str, Any]:
        return {
            "id": new_tool_call_id(),
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }


def forced_tool_choice(request: ChatCompletionRequest) -> ForcedToolChoice | None:
    """The constraint `tool_choice` asks for, or None ("none", "auto", or no tools)."""
    choice = request.tool_choice
    if choice in (None, "none", "auto"):
        if request.tools:
            _functions(request)  # validate the tools' shape either way
        return None
    if not request.tools:
        raise OpenAIError("When using `tool_choice`, `tools` must be set.", 400, param="tools")
    functions = _functions(request)
    if choice == "required":
        return ForcedToolChoice(
            mode="required",
            schema={
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "anyOf": [
                        {
                            "properties": {
                                "name": {"type": "string", "enum": [name]},
                                "parameters": _parameters_schema(function),
                            },
                            "required": ["name", "parameters"],
                        }
                        for name, function in functions.items()
                    ],
                },
            },
        )
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if name not in functions:
            raise OpenAIError(
                f"tool_choice names function {name!r}, which is not in tools "
                f"({', '.join(functions)}).",
                400,
                param="tool_choice",
            )
        return ForcedToolChoice(
            mode="named", schema=_parameters_schema(functions[name]), function_name=name
        )
    raise OpenAIError(
        f"tool_choice must be none, auto, required or a named function; got {choice!r}.",
        400,
        param="tool_choice",
    )
