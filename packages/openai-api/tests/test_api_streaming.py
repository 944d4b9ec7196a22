"""Stream plumbing: merging per-prompt streams and closing every producer when the consumer
leaves (that close is what aborts engine requests when a client disconnects)."""

from __future__ import annotations

import asyncio
import json

import pytest

from mono_llm.openai_api.errors import OpenAIError
from mono_llm.openai_api.streaming import (
    SSE_DONE,
    EventStreamResponse,
    merge_async_iterators,
    sse_event,
)


class Tracked:
    """An async generator factory that records whether each generator was closed."""

    def __init__(self) -> None:
        self.closed: list[str] = []

    async def gen(self, name: str, count: int, delay: float = 0.0):
        try:
            for i in range(count):
                await asyncio.sleep(delay)
                yield f"{name}{i}"
        finally:
            self.closed.append(name)


def test_merge_yields_everything_with_source_index() -> None:
    tracked = Tracked()

    async def run():
        return [
            item async for item in merge_async_iterators(tracked.gen("a", 3), tracked.gen("b", 2))
        ]

    items = asyncio.run(run())
    assert sorted(items) == [(0, "a0"), (0, "a1"), (0, "a2"), (1, "b0"), (1, "b1")]
    assert sorted(tracked.closed) == ["a", "b"]


def test_closing_the_merge_closes_every_source() -> None:
    tracked = Tracked()

    async def run():
        merged = merge_async_iterators(tracked.gen("a", 100, 0.01), tracked.gen("b", 100, 0.01))
        await merged.__anext__()
        await merged.aclose()

    asyncio.run(run())
    assert sorted(tracked.closed) == ["a", "b"]


def test_merge_reraises_a_source_error() -> None:
    async def failing():
        yield 1
        raise OpenAIError("bad", 400)

    async def run():
        return [item async for item in merge_async_iterators(failing(), Tracked().gen("b", 1))]

    try:
        asyncio.run(run())
    except OpenAIError as exc:
        assert exc.message == "bad"
    else:
        raise AssertionError("the error was swallowed")


def test_event_stream_cancels_its_producer_when_the_relay_stops() -> None:
    tracked = Tracked()

    async def run():
        response = EventStreamResponse(tracked.gen("events", 1000, 0.001))
        relay = response.body_iterator
        first = await relay.__anext__()
        await relay.aclose()  # what Starlette's disconnect handling amounts to
        await asyncio.sleep(0.05)  # the producer task runs its cleanup
        return first

    assert asyncio.run(run()) == "events0"
    assert tracked.closed == ["events"]


def test_sse_format() -> None:
    assert sse_event({"a": "é"}) == 'data: {"a": "é"}\n\n'
    assert json.loads(sse_event(OpenAIError("x", 400).to_response())[6:])["error"]["code"] == 400
    assert SSE_DONE == "data: [DONE]\n\n"


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
def test_events_never_carry_a_character_line_readers_split_on(separator) -> None:
    """A model may generate U+2028/U+2029/U+0085; JSON leaves them raw, and line readers built
    on str.splitlines (httpx's aiter_lines among them) would cut the data line there."""
    import httpx

    payload = {"choices": [{"delta": {"content": f"a{separator}b é"}}]}
    event = sse_event(payload)
    lines = [line for line in httpx._decoders.LineDecoder().decode(event) if line]
    assert len(lines) == 1 and lines[0].startswith("data: ")
    assert json.loads(lines[0][6:]) == payload  # the same text, and non-ASCII kept raw
    assert "é" in event
