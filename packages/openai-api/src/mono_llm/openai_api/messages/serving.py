"""POST /v1/messages: Anthropic messages -> chat messages -> one engine request -> blocks.

Like the Responses API, a Messages request runs through the chat path (template, tool
choice, structured outputs, reasoning parser) and `reply_router` splits the reply; here the
pieces become Anthropic content blocks (`thinking`, `text`, `tool_use`) and, streamed, its
events: message_start, then per block content_block_start / content_block_delta... /
content_block_stop, then message_delta (stop_reason, usage) and message_stop.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import AsyncGenerator
from typing import Any

from starlette.requests import Request

from mono_llm.openai_api.chat_completion.protocol import (
    ChatCompletionRequest,
    passthrough_extras,
)
from mono_llm.openai_api.chat_completion.serving import ChatServing
from mono_llm.openai_api.chat_completion.tool_choice import forced_tool_choice
from mono_llm.openai_api.errors import OpenAIError, from_exception
from mono_llm.openai_api.messages.protocol import MessagesRequest, anthropic_error_body
from mono_llm.openai_api.reasoning import ReasoningStream
from mono_llm.openai_api.reply_router import ReplySummary, route_reply
from mono_llm.openai_api.streaming import sse_json


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def _text_of(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise OpenAIError("content must be a string or a list of blocks.", 400, param=param)
    texts = []
    for j, block in enumerate(content):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise OpenAIError("Only text blocks are allowed here.", 400, param=f"{param}.{j}")
        texts.append(str(block.get("text", "")))
    return "".join(texts)


def _image_part(block: dict[str, Any], param: str) -> dict[str, Any]:
    source = block.get("source") or {}
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        url = f"data:{source.get('media_type', 'image/png')};base64,{source['data']}"
    elif source.get("type") == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        raise OpenAIError("An image block needs a base64 or url source.", 400, param=param)
    return {"type": "image_url", "image_url": {"url": url}}


def chat_messages(request: MessagesRequest) -> list[dict[str, Any]]:
    """The conversation as chat messages: tool_use blocks become assistant tool_calls and
    tool_result blocks tool messages."""
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": _text_of(request.system, "system")})
    for i, message in enumerate(request.messages):
        param = f"messages.{i}"
        if message.role not in ("user", "assistant"):
            raise OpenAIError(
                f"role must be user or assistant, got {message.role!r}.", 400, param=f"{param}.role"
            )
        if isinstance(message.content, str):
            messages.append({"role": message.role, "content": message.content})
            continue
        parts: list[dict[str, Any]] = []
        calls: list[dict[str, Any]] = []
        thinking: list[str] = []
        for j, block in enumerate(message.content):
            where = f"{param}.content.{j}"
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                parts.append({"type": "text", "text": str(block.get("text", ""))})
            elif kind == "image" and message.role == "user":
                parts.append(_image_part(block, where))
            elif kind == "tool_result" and message.role == "user":
                if not isinstance(block.get("tool_use_id"), str):
                    raise OpenAIError("tool_result needs a tool_use_id.", 400, param=where)
                content = block.get("content", "")
                messages.append({"role": "tool", "tool_call_id": block["tool_use_id"],
                                 "content": _text_of(content, f"{where}.content")})  # fmt: skip
            elif kind == "tool_use" and message.role == "assistant":
                if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                    raise OpenAIError("tool_use needs an id and a name.", 400, param=where)
                arguments = json.dumps(block.get("input") or {}, ensure_ascii=False)
                calls.append({"id": block["id"], "type": "function",
                              "function": {"name": block["name"], "arguments": arguments}})  # fmt: skip
            elif kind in ("thinking", "redacted_thinking") and message.role == "assistant":
                thinking.append(str(block.get("thinking", "")))
            else:
                raise OpenAIError(
                    f"Unsupported content block {kind!r} in a {message.role} message.",
                    400,
                    param=where,
                )
        if not parts and not calls:
            continue  # a user turn of tool results only
        if all(p["type"] == "text" for p in parts):
            content: Any = "".join(p["text"] for p in parts)
        else:
            content = parts
        chat: dict[str, Any] = {"role": message.role, "content": content}
        if calls:
            chat["tool_calls"] = calls
        if thinking:
            chat["reasoning_content"] = "".join(thinking)
        messages.append(chat)
    return messages


def _chat_tools(request: MessagesRequest) -> list[dict[str, Any]] | None:
    if not request.tools:
        return None
    tools = []
    for i, tool in enumerate(request.tools):
        if not isinstance(tool.get("name"), str) or tool.get("type", "custom") != "custom":
            raise OpenAIError(
                "Only custom tools with a name and an input_schema are supported.",
                400,
                param=f"tools.{i}",
            )
        function = {"name": tool["name"],
                    "parameters": tool.get("input_schema") or {"type": "object"}}  # fmt: skip
        if tool.get("description"):
            function["description"] = tool["description"]
        tools.append({"type": "function", "function": function})
    return tools


def _chat_tool_choice(request: MessagesRequest) -> Any:
    choice = request.tool_choice
    if choice is None:
        return None
    kind = choice.get("type")
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise OpenAIError(
        "tool_choice must be {type: auto | any | none} or {type: tool, name}.",
        400,
        param="tool_choice",
    )


class MessageBlocks:
    """The content blocks of one reply and the stream events that built them (a ReplySink)."""

    def __init__(self, message: dict[str, Any]) -> None:
        self.message = message
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._open: dict[str, Any] | None = None
        self._buffer = ""

    def _emit(self, kind: str, **fields: Any) -> None:
        self.events.append((kind, {"type": kind, **fields}))

    def take_events(self) -> list[tuple[str, dict[str, Any]]]:
        events, self.events = self.events, []
        return events

    def start(self) -> None:
        self._emit("message_start", message=copy.deepcopy(self.message))

    @property
    def in_call(self) -> bool:
        return self._open is not None and self._open["type"] == "tool_use"

    def _begin(self, block: dict[str, Any]) -> None:
        self.close_block()
        self._open, self._buffer = block, ""
        self._emit("content_block_start", index=len(self.message["content"]),
                   content_block=copy.deepcopy(block))  # fmt: skip

    def _delta(self, kind: str, text: str) -> None:
        self._buffer += text
        key = {"text_delta": "text", "thinking_delta": "thinking"}.get(kind, "partial_json")
        self._emit("content_block_delta", index=len(self.message["content"]),
                   delta={"type": kind, key: text})  # fmt: skip

    def reasoning(self, delta: str) -> None:
        if delta:
            if self._open is None or self._open["type"] != "thinking":
                self._begin({"type": "thinking", "thinking": "", "signature": ""})
            self._delta("thinking_delta", delta)

    def text(self, delta: str) -> None:
        if delta:
            if self._open is None or self._open["type"] != "text":
                self._begin({"type": "text", "text": ""})
            self._delta("text_delta", delta)

    def call_start(self, name: str) -> None:
        self._begin({"type": "tool_use", "id": _new_id("toolu"), "name": name, "input": {}})

    def call_arguments(self, delta: str) -> None:
        if delta:
            self._delta("input_json_delta", delta)

    def call(self, name: str, arguments: str) -> None:
        self.call_start(name)
        self.call_arguments(arguments)
        self.close_block()

    def close_block(self) -> None:
        block = self._open
        if block is None:
            return
        self._open = None
        if block["type"] == "tool_use":
            try:
                value = json.loads(self._buffer or "{}")
            except json.JSONDecodeError:  # cut short by max_tokens
                value = {}
            block["input"] = value if isinstance(value, dict) else {}
        else:
            block[block["type"]] = self._buffer
        self._emit("content_block_stop", index=len(self.message["content"]))
        self.message["content"].append(block)

    def finish(self, stop_reason: str, stop_sequence: str | None, output_tokens: int) -> None:
        self.close_block()
        if not self.message["content"]:
            self.text(" ")  # Anthropic replies always hold a block
            self._buffer = ""
            self.close_block()
        self.message.update(stop_reason=stop_reason, stop_sequence=stop_sequence)
        self.message["usage"]["output_tokens"] = output_tokens
        self._emit("message_delta", delta={"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                   usage={"output_tokens": output_tokens})  # fmt: skip
        self._emit("message_stop")


def sse(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {sse_json(data)}\n\n"


class MessagesServing:
    def __init__(self, chat: ChatServing) -> None:
        self.chat = chat

    def _chat_request(self, request: MessagesRequest) -> ChatCompletionRequest:
        choice = request.tool_choice or {}
        body: dict[str, Any] = {
            "model": request.model,
            "messages": chat_messages(request),
            "tools": _chat_tools(request),
            "tool_choice": _chat_tool_choice(request),
            "parallel_tool_calls": not choice.get("disable_parallel_tool_use", False),
            "max_completion_tokens": request.max_tokens,
            "stop": request.stop_sequences,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "top_k": request.top_k,
        }
        # vLLM's sampling extras (logit_bias, structured_outputs, ...) pass through the body.
        body = passthrough_extras(request.model_extra, body)
        if request.thinking and request.thinking.get("type") == "disabled":
            body["chat_template_kwargs"] = {"enable_thinking": False}
        try:
            return ChatCompletionRequest.model_validate(
                {k: v for k, v in body.items() if v is not None}
            )
        except ValueError as exc:
            raise OpenAIError(f"Invalid messages: {exc}", 400, param="messages") from exc

    async def create(
        self, request: MessagesRequest, raw_request: Request | None
    ) -> dict[str, Any] | AsyncGenerator[str, None]:
        """The finished message, or (stream) its events."""
        chat_request = self._chat_request(request)
        model, _, prompt, stream = await self.chat.start(chat_request, raw_request)
        forced = forced_tool_choice(chat_request)
        parser = self.chat.reasoning_parser
        reasoning = (
            ReasoningStream(parser, self.chat.prompt_text(model, prompt)) if parser else None
        )
        blocks = MessageBlocks({
            "id": _new_id("msg"), "type": "message", "role": "assistant", "model": model.name,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": len(prompt.token_ids), "output_tokens": 0},
        })  # fmt: skip
        summary = ReplySummary()
        routed = route_reply(
            stream,
            blocks,
            summary,
            reasoning=reasoning,
            forced=forced,
            tool_parser=self.chat._auto_parser(chat_request, forced, model),
            parallel_tool_calls=chat_request.parallel_tool_calls is not False,
        )

        def finish() -> None:
            blocks.message["usage"]["cache_read_input_tokens"] = summary.cached_tokens
            stop_sequence = None
            if summary.finish_reason == "length":
                reason = "max_tokens"
            elif summary.calls:
                reason = "tool_use"
            elif isinstance(summary.stop_reason, str) and summary.stop_reason in (
                request.stop_sequences or []
            ):
                reason, stop_sequence = "stop_sequence", summary.stop_reason
            else:
                reason = "end_turn"
            blocks.finish(reason, stop_sequence, summary.output_tokens)

        if not request.stream:
            try:
                async for _ in routed:
                    pass
            finally:
                await stream.aclose()  # type: ignore[attr-defined]
            finish()
            return blocks.message

        async def events() -> AsyncGenerator[str, None]:
            blocks.start()
            try:
                async for _ in routed:
                    for kind, data in blocks.take_events():
                        yield sse(kind, data)
                finish()
                for kind, data in blocks.take_events():
                    yield sse(kind, data)
            except Exception as exc:  # the status line is sent already: report in-band
                yield sse("error", anthropic_error_body(from_exception(exc)))
            finally:
                await stream.aclose()  # type: ignore[attr-defined]

        return events()
