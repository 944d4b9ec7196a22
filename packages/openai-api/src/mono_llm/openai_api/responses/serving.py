"""POST /v1/responses: input items -> chat messages -> one engine request -> output items.

A response runs through the chat path (chat template, tool choice, structured outputs,
reasoning parser) and its generated text is turned into Responses output items by
`OutputBuilder`: a `reasoning` item for the thinking, `message` items for the answer and
`function_call` items for tool calls. With `store` (the default) the response and its whole
conversation are kept in the bounded `ResponseStore`, which `previous_response_id`,
GET/DELETE/cancel and `background` runs read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from mono_llm.core.outputs import RequestOutput
from mono_llm.openai_api.chat_completion.protocol import (
    ChatCompletionRequest,
    passthrough_extras,
)
from mono_llm.openai_api.chat_completion.serving import ChatServing
from mono_llm.openai_api.chat_completion.tool_choice import ForcedToolChoice, forced_tool_choice
from mono_llm.openai_api.chat_completion.tool_parsers import ToolParser
from mono_llm.openai_api.errors import OpenAIError, from_exception
from mono_llm.openai_api.reasoning import ReasoningStream
from mono_llm.openai_api.reply_router import ReplySummary, route_reply
from mono_llm.openai_api.responses.conversation import (
    chat_response_format,
    chat_tool_choice,
    chat_tools,
    items_to_messages,
    normalized_input,
    output_to_messages,
)
from mono_llm.openai_api.responses.output import OutputBuilder
from mono_llm.openai_api.responses.protocol import ResponsesRequest, new_id, response_object, usage
from mono_llm.openai_api.responses.store import ResponseStore, StoredResponse
from mono_llm.openai_api.served_models import ServedModel
from mono_llm.openai_api.streaming import sse_json

logger = logging.getLogger("mono_llm.openai_api.responses")


@dataclass(slots=True)
class _Run:
    """One started response: its engine stream and what reading it needs."""

    request: ResponsesRequest
    response_id: str
    model: ServedModel
    prompt_tokens: int
    prompt_text: str | None
    stream: AsyncIterator[RequestOutput]
    forced: ForcedToolChoice | None
    auto: ToolParser | None
    input_items: list[dict[str, Any]]
    history: list[dict[str, Any]]  # earlier conversation + this input, as chat messages
    created_at: int


def sse(event: dict[str, Any]) -> str:
    """One Responses stream event (`event:` line with the type, as OpenAI sends)."""
    return f"event: {event['type']}\ndata: {sse_json(event)}\n\n"


class ResponsesServing:
    def __init__(self, chat: ChatServing, store: ResponseStore) -> None:
        self.chat = chat
        self.store = store

    # ------------------------------------------------------------------ setup
    def _chat_request(
        self, request: ResponsesRequest, messages: list[dict[str, Any]], response_id: str
    ) -> ChatCompletionRequest:
        body: dict[str, Any] = {
            "model": request.model,
            "messages": messages,
            "tools": chat_tools(request),
            "tool_choice": chat_tool_choice(request),
            "parallel_tool_calls": request.parallel_tool_calls,
            "response_format": chat_response_format(request),
            "max_completion_tokens": request.max_output_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "seed": request.seed,
            "top_k": request.top_k,
            "request_id": response_id,
        }
        # vLLM's sampling extras (logit_bias, stop, ignore_eos, ...) pass through extra_body.
        body = passthrough_extras(request.model_extra, body)
        if request.reasoning is not None and request.reasoning.effort is not None:
            body["reasoning_effort"] = request.reasoning.effort
        try:
            return ChatCompletionRequest.model_validate(
                {k: v for k, v in body.items() if v is not None}
            )
        except ValueError as exc:
            raise OpenAIError(f"Invalid input: {exc}", 400, param="input") from exc

    async def _start(self, request: ResponsesRequest, raw_request: Request | None) -> _Run:
        if request.background and not request.store:
            raise OpenAIError("background responses need store=true.", 400, param="background")
        if request.background and request.stream:
            raise OpenAIError(
                "background responses are polled with GET /v1/responses/{id}; "
                "stream=true is not supported with background=true.",
                400,
                param="stream",
            )
        if request.input == "" and not request.previous_response_id:
            raise OpenAIError("input must not be empty.", 400, param="input")
        history: list[dict[str, Any]] = []
        if request.previous_response_id:
            previous = self.store.get(request.previous_response_id, param="previous_response_id")
            if previous.running:
                raise OpenAIError(
                    f"Response '{request.previous_response_id}' is still in progress.",
                    400,
                    param="previous_response_id",
                )
            history = [dict(m) for m in previous.messages]
        if request.store:
            self.store.reserve_check()
        input_items = normalized_input(request) if request.input != "" else []
        history += items_to_messages(input_items)
        messages = list(history)
        if request.instructions:  # not carried over to later responses, as OpenAI
            messages.insert(0, {"role": "system", "content": request.instructions})
        response_id = new_id("resp")
        chat_request = self._chat_request(request, messages, response_id)
        model, _, prompt, stream = await self.chat.start(chat_request, raw_request)
        forced = forced_tool_choice(chat_request)
        return _Run(
            request=request,
            response_id=response_id,
            model=model,
            prompt_tokens=len(prompt.token_ids),
            prompt_text=prompt.text,
            stream=stream,
            forced=forced,
            auto=self.chat._auto_parser(chat_request, forced, model),
            input_items=input_items,
            history=history,
            created_at=int(time.time()),
        )

    def _skeleton(self, run: _Run, status: str) -> dict[str, Any]:
        return response_object(
            run.request, run.response_id, run.model.name, status=status, created_at=run.created_at
        )

    # ------------------------------------------------------------------ generation
    async def _generate(self, run: _Run, builder: OutputBuilder) -> AsyncGenerator[None, None]:
        """Feed the engine's output into `builder`; yields after each engine step."""
        parser = self.chat.reasoning_parser
        summary = ReplySummary()
        async for _ in route_reply(
            run.stream,
            builder,
            summary,
            reasoning=ReasoningStream(parser, run.prompt_text) if parser is not None else None,
            forced=run.forced,
            tool_parser=run.auto,
            parallel_tool_calls=run.request.parallel_tool_calls,
        ):
            yield
        reasoning_tokens = 0
        if summary.reasoning_text:
            tokenizer = run.model.tokenizer
            reasoning_tokens = len(
                tokenizer(summary.reasoning_text, add_special_tokens=False).input_ids
            )
        output_tokens = summary.output_tokens
        builder.finish(
            incomplete=summary.finish_reason == "length",
            usage=usage(
                run.prompt_tokens,
                output_tokens,
                summary.cached_tokens,
                min(reasoning_tokens, output_tokens),
            ),
        )

    def _store(self, run: _Run, response: dict[str, Any]) -> None:
        """Keep a finished response and its whole conversation (with store=true)."""
        if not run.request.store:
            return
        messages = run.history + output_to_messages(response["output"])
        entry = StoredResponse(response=response, input_items=run.input_items, messages=messages)
        self.store.put(run.response_id, entry)

    # ------------------------------------------------------------------ entry points
    async def create(
        self, request: ResponsesRequest, raw_request: Request | None
    ) -> dict[str, Any] | AsyncGenerator[str, None]:
        """The finished response, a stream of events, or (background) the queued response."""
        run = await self._start(request, raw_request)
        if request.stream:
            return self._stream(run)
        if request.background:
            return self._background(run)
        builder = OutputBuilder(self._skeleton(run, "in_progress"))
        try:
            async for _ in self._generate(run, builder):
                pass
        finally:
            await run.stream.aclose()  # type: ignore[attr-defined]
        self._store(run, builder.response)
        return builder.response

    async def _stream(self, run: _Run) -> AsyncGenerator[str, None]:
        builder = OutputBuilder(self._skeleton(run, "in_progress"))
        builder.start()
        try:
            for event in builder.take_events():
                yield sse(event)
            async for _ in self._generate(run, builder):
                for event in builder.take_events():
                    yield sse(event)
            for event in builder.take_events():
                yield sse(event)
            self._store(run, builder.response)
        except Exception as exc:  # the status line is sent already: report in-band
            error = from_exception(exc)
            code = "server_error" if error.status >= 500 else "invalid_request_error"
            builder.fail(code, error.message, error.param)
            for event in builder.take_events():
                yield sse(event)
        finally:
            await run.stream.aclose()  # type: ignore[attr-defined]

    def _background(self, run: _Run) -> dict[str, Any]:
        builder = OutputBuilder(self._skeleton(run, "queued"))
        response = builder.response

        async def work() -> None:
            response["status"] = "in_progress"
            try:
                async for _ in self._generate(run, builder):
                    builder.take_events()  # nobody streams a background run
                entry.messages = run.history + output_to_messages(response["output"])
            except asyncio.CancelledError:
                response["status"] = "cancelled"
                raise
            except Exception as exc:
                error = from_exception(exc)
                response["status"] = "failed"
                response["error"] = {"code": "server_error", "message": error.message}
            finally:
                with contextlib.suppress(Exception):
                    await run.stream.aclose()  # type: ignore[attr-defined]

        entry = StoredResponse(response=response, input_items=run.input_items,
                               messages=list(run.history))  # fmt: skip
        self.store.put(run.response_id, entry)
        entry.task = asyncio.create_task(work(), name=f"response-{run.response_id}")
        return dict(response)

    def retrieve(self, response_id: str) -> dict[str, Any]:
        return self.store.get(response_id).response

    async def cancel(self, response_id: str) -> dict[str, Any]:
        entry = self.store.get(response_id)
        if not entry.response.get("background"):
            raise OpenAIError(
                "Only responses created with background=true can be cancelled.",
                400,
                param="response_id",
            )
        if entry.running:
            await entry.stop()
            if entry.response["status"] in ("queued", "in_progress"):  # cancelled unstarted
                entry.response["status"] = "cancelled"
        return entry.response

    async def delete(self, response_id: str) -> dict[str, Any]:
        entry = self.store.delete(response_id)
        await entry.stop()
        return {"id": response_id, "object": "response.deleted", "deleted": True}

    def input_items(
        self, response_id: str, *, limit: int, order: str, after: str | None
    ) -> dict[str, Any]:
        items = list(self.store.get(response_id).input_items)
        if order == "desc":
            items.reverse()
        if after is not None:
            ids = [item["id"] for item in items]
            if after not in ids:
                raise OpenAIError(f"No input item with id '{after}'.", 400, param="after")
            items = items[ids.index(after) + 1 :]
        page = items[:limit]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
