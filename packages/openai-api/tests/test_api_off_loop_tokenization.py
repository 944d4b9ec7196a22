"""Large request bodies are templated and tokenized off the event loop."""

from __future__ import annotations

import asyncio
import threading

from starlette.requests import Request

from mono_llm.openai_api.engine_requests import OFF_LOOP_BODY_BYTES, run_off_loop_if_large


def _request(content_length: int | None) -> Request:
    headers = [] if content_length is None else [(b"content-length", str(content_length).encode())]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers})


def test_small_bodies_run_inline_and_large_ones_in_a_worker_thread() -> None:
    async def thread_of(request: Request | None) -> int:
        return await run_off_loop_if_large(request, threading.get_ident)

    async def scenario() -> tuple[int, int, int, int]:
        loop_thread = threading.get_ident()
        small = await thread_of(_request(100))
        large = await thread_of(_request(OFF_LOOP_BODY_BYTES + 1))
        unknown = await thread_of(None)
        return loop_thread, small, large, unknown

    loop_thread, small, large, unknown = asyncio.run(scenario())
    assert small == loop_thread
    assert unknown == loop_thread
    assert large != loop_thread


def test_errors_from_the_worker_reach_the_caller() -> None:
    def fail() -> None:
        raise ValueError("bad prompt")

    async def scenario() -> str:
        try:
            await run_off_loop_if_large(_request(OFF_LOOP_BODY_BYTES * 2), fail)
        except ValueError as exc:
            return str(exc)
        return "no error"

    assert asyncio.run(scenario()) == "bad prompt"
