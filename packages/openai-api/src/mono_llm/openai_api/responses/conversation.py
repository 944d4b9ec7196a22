"""Responses input items <-> chat messages, and Responses tools / formats -> chat's.

A Responses request is answered through the chat path (template, tool choice, structured
outputs), so its `input` (a string or a list of items: messages, `function_call`,
`function_call_output`, `reasoning`) becomes chat messages, its flat function tools become
chat's nested ones, and `text.format` becomes `response_format`. Stored conversations keep
chat messages, so `previous_response_id` replays the whole earlier exchange, tool calls and
their outputs included.
"""

from __future__ import annotations

from typing import Any

from mono_llm.openai_api.errors import OpenAIError
from mono_llm.openai_api.responses.protocol import ResponsesRequest, new_id

_INPUT_ROLES = ("user", "system", "developer", "assistant")


def _text_part(part: Any, param: str) -> dict[str, Any]:
    """One content part of an input message as a chat content part."""
    if not isinstance(part, dict):
        raise OpenAIError("A content part must be an object.", 400, param=param)
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text", "refusal"):
        text = part.get("text", part.get("refusal"))
        if not isinstance(text, str):
            raise OpenAIError(f"A {kind} part needs a string `text`.", 400, param=param)
        return {"type": "text", "text": text}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise OpenAIError(
                "input_image needs an image_url (file_id is not supported).", 400, param=param
            )
        return {"type": "image_url", "image_url": {"url": url, "detail": part.get("detail")}}
    raise OpenAIError(f"Unsupported content part type {kind!r}.", 400, param=param)


def normalized_input(request: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's input as Responses items with ids (what GET .../input_items lists)."""
    if isinstance(request.input, str):
        return [
            {
                "id": new_id("msg"),
                "type": "message",
                "role": "user",
                "status": "completed",
                "content": [{"type": "input_text", "text": request.input}],
            }
        ]
    items = []
    for i, raw in enumerate(request.input):
        param = f"input.{i}"
        if not isinstance(raw, dict):
            raise OpenAIError("Every input item must be an object.", 400, param=param)
        item = dict(raw)
        kind = item.setdefault("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in _INPUT_ROLES:
                raise OpenAIError(
                    f"role must be one of {', '.join(_INPUT_ROLES)}; got {role!r}.",
                    400,
                    param=f"{param}.role",
                )
            content = item.get("content")
            if isinstance(content, str):
                part_type = "output_text" if role == "assistant" else "input_text"
                item["content"] = [{"type": part_type, "text": content}]
            elif not isinstance(content, list):
                raise OpenAIError(
                    "content must be a string or a list of parts.", 400, param=f"{param}.content"
                )
            for j, part in enumerate(item["content"]):
                _text_part(part, f"{param}.content.{j}")  # validate now, not mid-generation
            item.setdefault("id", new_id("msg"))
            item.setdefault("status", "completed")
        elif kind == "function_call":
            for key in ("call_id", "name", "arguments"):
                if not isinstance(item.get(key), str):
                    raise OpenAIError(
                        f"function_call needs a string {key}.", 400, param=f"{param}.{key}"
                    )
            item.setdefault("id", new_id("fc"))
            item.setdefault("status", "completed")
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise OpenAIError(
                    "function_call_output needs a string call_id.", 400, param=f"{param}.call_id"
                )
            output = item.get("output")
            if not isinstance(output, (str, list)):
                raise OpenAIError(
                    "function_call_output needs an output string.", 400, param=f"{param}.output"
                )
            item.setdefault("id", new_id("fco"))
            item.setdefault("status", "completed")
        elif kind == "reasoning":
            item.setdefault("id", new_id("rs"))
        else:
            raise OpenAIError(
                f"Input items of type {kind!r} are not supported (message, function_call, "
                "function_call_output, reasoning).",
                400,
                param=f"{param}.type",
            )
        items.append(item)
    return items


def _output_text(output: Any) -> str:
    if isinstance(output, str):
        return output
    return "".join(p.get("text", "") for p in output if isinstance(p, dict))


def items_to_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages for Responses items; consecutive function calls share one assistant
    message, as a chat model emits several calls in one turn."""
    messages: list[dict[str, Any]] = []
    pending_reasoning: str | None = None
    for index, item in enumerate(items):
        kind = item.get("type", "message")
        if kind == "message":
            role = "system" if item["role"] == "developer" else item["role"]
            parts = [_text_part(p, f"input.{index}") for p in item["content"]]
            if all(p["type"] == "text" for p in parts):
                content: Any = "".join(p["text"] for p in parts)
            else:
                content = parts
            message: dict[str, Any] = {"role": role, "content": content}
            if role == "assistant" and pending_reasoning:
                message["reasoning_content"] = pending_reasoning
            pending_reasoning = None
            messages.append(message)
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls"):
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": item["call_id"],
                    "content": _output_text(item["output"]),
                }
            )
        elif kind == "reasoning":
            texts = [c.get("text", "") for c in item.get("content") or [] if isinstance(c, dict)]
            pending_reasoning = "".join(texts) or None
    return messages


def chat_tools(request: ResponsesRequest) -> list[dict[str, Any]] | None:
    """Responses function tools (flat) as chat tools (nested under `function`)."""
    if not request.tools:
        return None
    tools = []
    for i, tool in enumerate(request.tools):
        if tool.get("type") != "function" or not isinstance(tool.get("name"), str):
            raise OpenAIError(
                "Only tools of type 'function' with a name are supported.", 400, param=f"tools.{i}"
            )
        function = {"name": tool["name"]}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                function[key] = tool[key]
        tools.append({"type": "function", "function": function})
    return tools


def chat_tool_choice(request: ResponsesRequest) -> str | dict[str, Any] | None:
    choice = request.tool_choice
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise OpenAIError(
                f"tool_choice must be auto, none, required or a function; got {choice!r}.",
                400,
                param="tool_choice",
            )
        return choice if request.tools or choice != "auto" else None
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise OpenAIError(
        "tool_choice must be auto, none, required or {'type': 'function', 'name': ...}.",
        400,
        param="tool_choice",
    )


def chat_response_format(request: ResponsesRequest) -> dict[str, Any] | None:
    fmt = request.text.format if request.text else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    if fmt.json_schema is None:
        raise OpenAIError("text.format json_schema needs a schema.", 400, param="text.format")
    return {
        "type": "json_schema",
        "json_schema": {"name": fmt.name or "response", "schema": fmt.json_schema,
                        "strict": fmt.strict},
    }  # fmt: skip


def output_to_messages(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The assistant turn(s) a response's output items stand for, as chat messages."""
    return items_to_messages(
        [
            {**item, "content": item.get("content") or []} if item["type"] == "message" else item
            for item in output
            if item["type"] in ("message", "function_call", "reasoning")
        ]
    )
