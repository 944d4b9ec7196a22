"""Server-sent events and the asyncio plumbing that ties a request's life to its client.

A request with several prompts runs one engine request per prompt; their outputs are merged
as they come. Whatever ends the consumer (client gone, error, normal end) cancels every
producer, and each producer closes its engine generator, which aborts the engine request
and frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import StreamingResponse

from mono_llm.openai_api.shutdown import CUT, current_streams

T = TypeVar("T")

SSE_DONE = "data: [DONE]\n\n"


# Characters that str.splitlines() (and so httpx's `aiter_lines`, and other line readers
# built on it) treats as line ends, which JSON leaves unescaped: a model that generates one
# would split a `data:` line in two for such clients. Escaped, the JSON decodes the same.
_LINE_BREAKS_JSON_KEEPS = str.maketrans(
    {"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"}
)


def sse_json(payload: BaseModel | dict[str, Any]) -> str:
    """The JSON text of one event: non-ASCII kept as is, never a character any line reader
    takes for a line end. None fields are kept (OpenAI chunks carry explicit nulls)."""
    if isinstance(payload, BaseModel):
        body = payload.model_dump_json(exclude_unset=False)
    else:
        body = json.dumps(payload, ensure_ascii=False)
    return body.translate(_LINE_BREAKS_JSON_KEEPS)


def sse_event(payload: BaseModel | dict[str, Any]) -> str:
    """One `data:` event."""
    return f"data: {sse_json(payload)}\n\n"


_END = object()


async def merge_async_iterators(
    *iterators: AsyncIterator[T],
) -> AsyncGenerator[tuple[int, T], None]:
    """Items of several async iterators as (iterator index, item), in arrival order."""
    if len(iterators) == 1:
        async with contextlib.aclosing(_as_generator(iterators[0])) as only:
            async for item in only:
                yield 0, item
        return
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def pump(index: int, iterator: AsyncIterator[T]) -> None:
        try:
            async with contextlib.aclosing(_as_generator(iterator)) as gen:
                async for item in gen:
                    await queue.put((index, item))
        except BaseException as exc:
            await queue.put((index, exc))
            return
        await queue.put((index, _END))

    tasks = [asyncio.create_task(pump(i, it)) for i, it in enumerate(iterators)]
    remaining = len(tasks)
    try:
        while remaining:
            index, item = await queue.get()
            if item is _END:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _as_generator(iterator: AsyncIterator[T]) -> AsyncGenerator[T, None]:
    """Wrap so that closing the wrapper closes the engine generator too."""
    try:
        async for item in iterator:
            yield item
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Run `work`; if the client disconnects first, cancel it (aborting its engine requests).

    Streaming responses get this from Starlette; non-streaming ones need it so a client that
    gives up on a long generation does not keep the engine busy.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.create_task(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return None


# The in-band event a stream cut at the graceful-shutdown deadline ends with (then [DONE]).
SHUTDOWN_ERROR_EVENT = sse_event(
    {
        "error": {
            "message": "The server is shutting down and ended this stream before it finished.",
            "type": "ServiceUnavailableError",
            "param": None,
            "code": 503,
        }
    }
)


async def _in_own_task(events: AsyncGenerator[str, None]) -> AsyncGenerator[str, None]:
    """Produce `events` in a separate asyncio task and relay them.

    Starlette stops a stream whose client left by cancelling an anyio scope, which re-cancels
    every await in cleanup code; the engine generators would then be closed only by garbage
    collection. Here the producer is an ordinary task: the relay cancels it once, and its
    cleanup (closing engine generators, which aborts the requests) runs to completion.
    """
    queue: asyncio.Queue[Any] = asyncio.Queue()
    # Registered with the app so that shutdown can end it (`shutdown.cut_streams`).
    registry = current_streams.get()
    if registry is not None:
        registry.add(queue)

    async def produce() -> None:
        try:
            async with contextlib.aclosing(events) as gen:
                async for event in gen:
                    queue.put_nowait(event)
        finally:
            queue.put_nowait(_END)

    producer = asyncio.create_task(produce())
    try:
        while True:
            event = await queue.get()
            if event is _END:
                break
            if event is CUT:
                yield SHUTDOWN_ERROR_EVENT
                yield SSE_DONE
                break
            yield event
    finally:
        producer.cancel()
        if registry is not None:
            registry.discard(queue)


class EventStreamResponse(StreamingResponse):
    """A `text/event-stream` response whose producer is aborted when the client leaves."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncGenerator[str, None], **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"Cache-Control": "no-cache"})
        super().__init__(_in_own_task(events), **kwargs)
