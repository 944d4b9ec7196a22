"""The bounded in-memory store behind `store`, `previous_response_id` and background runs.

Entries are kept at most `ttl_s` seconds and at most `max_entries` at once (least recently
used first out), so a long-running server does not grow without limit; a response that is
still running (background) is never evicted. Everything lives in the server process: a
restart forgets stored responses, as it would with vLLM.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from mono_llm.openai_api.errors import OpenAIError


@dataclass(slots=True)
class StoredResponse:
    response: dict[str, Any]  # the `response` object as GET returns it
    input_items: list[dict[str, Any]]  # this request's input items, with ids
    messages: list[dict[str, Any]]  # the whole conversation so far (no instructions)
    task: asyncio.Task[Any] | None = None  # a background run
    stored_at: float = field(default_factory=lambda: time.monotonic())

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    async def stop(self) -> None:
        """Cancel a running background run and wait until it has ended, so its cleanup
        (closing the engine stream, which aborts the request) is done when this returns."""
        if self.task is None or self.task.done():
            return
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task


class ResponseStore:
    def __init__(self, max_entries: int, ttl_s: float) -> None:
        if max_entries < 1 or ttl_s <= 0:
            raise ValueError("the response store needs max_entries >= 1 and ttl_s > 0")
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, e in self._entries.items() if now - e.stored_at > self.ttl_s]:
            if not self._entries[key].running:
                del self._entries[key]

    def put(self, response_id: str, entry: StoredResponse) -> None:
        """Keep `entry`, evicting the least recently used finished entries past the bound."""
        self._expire()
        self._entries[response_id] = entry
        self._entries.move_to_end(response_id)
        for key in list(self._entries):
            if len(self._entries) <= self.max_entries:
                break
            if key != response_id and not self._entries[key].running:
                del self._entries[key]

    def reserve_check(self) -> None:
        """503 when every slot holds a running background response."""
        self._expire()
        if len(self._entries) >= self.max_entries and all(
            e.running for e in self._entries.values()
        ):
            raise OpenAIError(
                "The response store is full of running background responses; retry later.",
                503,
                headers={"Retry-After": "1"},
            )

    def get(self, response_id: str, param: str = "response_id") -> StoredResponse:
        """The entry, or OpenAI's 404."""
        self._expire()
        entry = self._entries.get(response_id)
        if entry is None:
            raise OpenAIError(f"Response with id '{response_id}' not found.", 404, param=param)
        self._entries.move_to_end(response_id)
        return entry

    def delete(self, response_id: str) -> StoredResponse:
        entry = self.get(response_id)
        del self._entries[response_id]
        return entry
