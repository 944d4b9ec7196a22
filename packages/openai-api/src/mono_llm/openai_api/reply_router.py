"""Routes a generated reply, piece by piece, into thinking, text and tool calls.

The Responses API and the Anthropic Messages API both build their output as a sequence of
blocks (thinking, text, tool calls) and stream them as events. This module is what they
share: it reads the engine's delta outputs, splits the thinking off with the reasoning
parser, reads tool calls (forced by `tool_choice`, or found by the tool parser) out of the
answer, and calls a `ReplySink` for each piece, so the two APIs only differ in how a block
is written.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from mono_llm.core.outputs import RequestOutput
from mono_llm.openai_api.chat_completion.tool_choice import ForcedToolChoice
from mono_llm.openai_api.chat_completion.tool_parsers import StreamingToolState, ToolParser
from mono_llm.openai_api.reasoning import ReasoningStream


class ReplySink(Protocol):
    """What receives the pieces of a reply, in order."""

    @property
    def in_call(self) -> bool: ...

    def reasoning(self, delta: str) -> None: ...

    def text(self, delta: str) -> None: ...

    def call_start(self, name: str) -> None: ...

    def call_arguments(self, delta: str) -> None: ...

    def call(self, name: str, arguments: str) -> None: ...


@dataclass(slots=True)
class ReplySummary:
    """What the reply came to, once it has ended."""

    output_tokens: int = 0
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    cached_tokens: int = 0
    reasoning_text: str = ""
    calls: int = 0


async def route_reply(
    stream: AsyncIterator[RequestOutput],
    sink: ReplySink,
    summary: ReplySummary,
    *,
    reasoning: ReasoningStream | None,
    forced: ForcedToolChoice | None,
    tool_parser: ToolParser | None,
    parallel_tool_calls: bool = True,
) -> AsyncGenerator[None, None]:
    """Feed the engine's output into `sink`; yields after each engine step (so a caller can
    send the events made so far) and fills `summary` at the end."""
    tools = StreamingToolState(tool_parser) if tool_parser is not None else None
    required: list[str] = []
    # With a tool parser, each step's answer text is fed one step late, so the last piece
    # goes to `finish` whole, as chat streaming does (a call it completes is not sent half
    # first).
    tool_text: list[str] = []

    def parsed(content: str, deltas: list[dict[str, Any]]) -> None:
        sink.text(content)
        for delta in deltas:
            if delta["index"] > 0 and not parallel_tool_calls:
                continue
            if "id" in delta:
                sink.call_start(delta["function"]["name"])
                summary.calls += 1
            sink.call_arguments(delta["function"]["arguments"])

    def answer(text: str) -> None:
        if forced is not None and forced.mode == "named":
            if text and not sink.in_call:
                sink.call_start(forced.function_name or "")
                summary.calls += 1
            sink.call_arguments(text)
        elif forced is not None:
            required.append(text)
        elif tools is not None:
            tool_text.append(text)
        else:
            sink.text(text)

    first = None
    async for output in stream:
        first = first or output
        if tools is not None and tool_text:
            parsed(*tools.feed("".join(tool_text)))
            tool_text.clear()
        for completion in output.outputs:
            summary.output_tokens += len(completion.token_ids)
            if completion.finish_reason is not None:
                summary.finish_reason = completion.finish_reason
                summary.stop_reason = completion.stop_reason
            if reasoning is not None:
                thought, text = reasoning.feed(completion.text)
                sink.reasoning(thought)
                answer(text)
            else:
                answer(completion.text)
        yield
    if reasoning is not None:
        thought, text = reasoning.finish()
        sink.reasoning(thought)
        answer(text)
        summary.reasoning_text = reasoning.reasoning_text
    if forced is not None and forced.mode == "named" and not sink.in_call:
        sink.call_start(forced.function_name or "")
        summary.calls += 1
    elif forced is not None and forced.mode == "required":
        calls = forced.tool_calls("".join(required))
        if calls is None:  # cut short: what was generated, as text
            sink.text("".join(required))
        else:
            for call in calls[: None if parallel_tool_calls else 1]:
                sink.call(call["function"]["name"], call["function"]["arguments"])
                summary.calls += 1
    elif tools is not None:
        parsed(*tools.finish("".join(tool_text)))
    summary.cached_tokens = first.num_cached_tokens if first is not None else 0
