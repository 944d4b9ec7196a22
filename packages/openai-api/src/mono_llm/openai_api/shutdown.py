"""Graceful shutdown and dead engines: drain, refuse politely, cut streams in band, exit.

On SIGTERM (or when an engine dies) the server drains: the listening socket stays open, new
API requests get 503 with `Retry-After` (so a client or proxy retries on another replica), and
requests in flight run on. When none are left, or `--timeout-graceful-shutdown` seconds have
passed, streams still running end with an OpenAI-style error event and `[DONE]` (a client
sees why the stream ended, rather than a dropped connection), and uvicorn stops.

A dead engine cannot recover inside this process: the server logs it, drains and exits with
status 1, so a supervisor (systemd, Kubernetes, Docker's restart policy) starts a fresh one.
/health answers 503 meanwhile.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Receive, Scope, Send

from mono_llm.openai_api.errors import OVERLOAD_RETRY_AFTER_S, OpenAIError

if TYPE_CHECKING:
    from mono_llm.openai_api.server_state import ServerState

logger = logging.getLogger("mono_llm.openai_api.shutdown")

# Probes and scrapes: answered while draining and not counted as work in flight.
PROBE_PATHS = frozenset({"/health", "/ready", "/ping", "/version", "/metrics"})
# Seconds streams get to send their error event and close once they are cut.
_CUT_GRACE_S = 2.0
# How often the engine watchdog looks at the engines.
_WATCHDOG_INTERVAL_S = 0.5

# The stream registry of the app serving the current request (set per request by the
# middleware; read by EventStreamResponse so it can be cut at the shutdown deadline).
current_streams: contextvars.ContextVar[set[asyncio.Queue[Any]] | None] = contextvars.ContextVar(
    "mono_llm_streams", default=None
)
CUT = object()  # put into a stream's queue: end it with an error event now


class DrainingMiddleware:
    """Counts requests in flight; while draining, answers new ones with 503 + Retry-After."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: ServerState | None = getattr(scope["app"].state, "server", None)
        if scope["type"] != "http" or state is None or scope.get("path") in PROBE_PATHS:
            await self.app(scope, receive, send)
            return
        if state.draining:
            error = OpenAIError(
                "The server is shutting down; retry the request (another replica may serve it).",
                503,
                headers={"Retry-After": str(OVERLOAD_RETRY_AFTER_S), "Connection": "close"},
            )
            await error.to_json_response()(scope, receive, send)
            return
        token = current_streams.set(state.streams)
        state.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            state.inflight -= 1
            current_streams.reset(token)


def cut_streams(state: ServerState) -> int:
    """End every running stream with an error event; returns how many were cut."""
    streams = list(state.streams)
    for stream in streams:
        stream.put_nowait(CUT)
    return len(streams)


async def drain(state: ServerState, timeout: float) -> None:
    """Wait for requests in flight (at most `timeout` s), then cut the streams left."""
    state.draining = True
    deadline = time.monotonic() + timeout
    while state.inflight > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if state.inflight > 0:
        cut = cut_streams(state)
        logger.warning(
            "graceful shutdown: %d requests still running after %ss; ending %d streams with "
            "an error event",
            state.inflight,
            timeout,
            cut,
        )
        deadline = time.monotonic() + _CUT_GRACE_S
        while state.inflight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)


async def watch_engines(state: ServerState) -> None:
    """Ask the host to stop (exit status 1) once any engine loop has died."""
    while True:
        await asyncio.sleep(_WATCHDOG_INTERVAL_S)
        dead = [m for m in state.registry if getattr(m.engine, "errored", False)]
        if not dead:
            continue
        names = ", ".join(m.name for m in dead)
        logger.error(
            "the engine of %s has died (%r); the server drains and exits with status 1 so a "
            "supervisor restarts it",
            names,
            getattr(dead[0].engine, "dead_error", None),
        )
        state.exit_code = 1
        if state.on_fatal is not None:
            state.on_fatal()
        return
