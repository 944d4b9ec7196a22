"""ASGI guards that keep hostile input from reaching a route as a crash.

- `InternalErrorMiddleware` answers an unexpected exception with an OpenAI-shaped 500 and
  swallows it. Starlette's own last-resort handler (ServerErrorMiddleware) sends the 500 and
  then re-raises, which makes uvicorn log a traceback and drop the keep-alive connection:
  the client's *next* request on that connection then fails with "connection reset".
- `JsonTextMiddleware` refuses JSON bodies whose strings hold lone UTF-16 surrogates
  (`"\\ud800"`). Python's json module accepts them, but no tokenizer can encode them (the
  Rust tokenizers raise a TypeError, i.e. a 500) and they cannot be written back as UTF-8.
  Checking here covers every endpoint and every field (prompts, messages, tools, stop
  strings, documents) in one place, and names the field in `param`.
- `BodyLimitsMiddleware` bounds a request body before any route parses it: past
  `--max-request-body-bytes` a 413 (checked on Content-Length and again while reading, so a
  chunked or lying client is cut off as soon as it passes the limit), a body not fully
  received within `--body-read-timeout` seconds a 408, and JSON nested too deeply for Python's
  parser a 400 (instead of a RecursionError somewhere downstream).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mono_llm.openai_api.errors import OpenAIError, from_exception

logger = logging.getLogger(__name__)

# A JSON escape of a UTF-16 surrogate (\uD800-\uDFFF); bodies without one skip the parse.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class InternalErrorMiddleware:
    """The innermost middleware: an exception no handler took becomes a 500 JSON body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = {"started": False, "ended": False}

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                state["ended"] = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:  # from_exception logs the traceback server-side
            error = from_exception(exc)
            if state["ended"]:
                return
            if state["started"]:
                # The status line is out: nothing valid can follow; end the body cleanly.
                logger.error("error after the response started: %r", exc)
                with contextlib.suppress(Exception):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await error.to_json_response()(scope, receive, send)


def _lone_surrogate_path(value: Any, path: list[str]) -> list[str] | None:
    """The path to the first string holding a lone surrogate, or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        # A key may hold the surrogate itself: escape it, or the error body could not be
        # written as UTF-8 either.
        key_path = [*path, str(key).encode("utf-8", "backslashreplace").decode("utf-8")]
        if isinstance(key, str) and _lone_surrogate_path(key, key_path) is not None:
            return key_path
        found = _lone_surrogate_path(item, key_path)
        if found is not None:
            return found
    return None


def _is_json(scope: Scope) -> bool:
    content_type = Headers(scope=scope).get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    # FastAPI parses a body without a content type as JSON too.
    return media in ("", "application/json") or media.endswith("+json")


class JsonTextMiddleware:
    """400 naming the field when a JSON body's string holds a lone surrogate."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # disconnected while sending the body
                await self.app(scope, _replay([message], receive), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if _SURROGATE_ESCAPE.search(body):
            try:
                parsed = json.loads(body)
                path = _lone_surrogate_path(parsed, [])
            except (ValueError, RecursionError):
                path = None  # invalid JSON: the route answers that
            if path is not None:
                param = ".".join(path) or "body"
                response = OpenAIError(
                    f"{param} is not valid Unicode text: it holds a lone UTF-16 surrogate "
                    "(an unpaired \\uD800-\\uDFFF escape).",
                    400,
                    param=param,
                ).to_json_response()
                await response(scope, receive, send)
                return
        replayed: Message = {"type": "http.request", "body": body, "more_body": False}
        await self.app(scope, _replay([replayed], receive), send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive that returns `messages` first, then reads the connection again."""
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


# Bodies with fewer opening brackets than this cannot nest deeply enough to hit Python's
# recursion limit: they skip the depth check (a C-speed count, no parse).
_DEPTH_CHECK_BRACKETS = 256


class BodyLimitsMiddleware:
    """413 past `max_body_bytes`, 408 past `read_timeout` seconds, 400 for too-deep JSON."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, read_timeout: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.read_timeout = read_timeout

    def _too_large(self) -> OpenAIError:
        return OpenAIError(
            f"The request body is larger than the server's limit of {self.max_body_bytes} "
            "bytes (--max-request-body-bytes).",
            413,
            param="body",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            # Closing spares reading (and discarding) a body that may be gigabytes.
            error = self._too_large()
            error.headers = {"Connection": "close"}
            await error.to_json_response()(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        deadline = time.monotonic() + self.read_timeout if self.read_timeout > 0 else None
        while True:
            try:
                if deadline is None:
                    message = await receive()
                else:
                    message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0))
            except asyncio.TimeoutError:
                error = OpenAIError(
                    f"The request body was not received within {self.read_timeout} s "
                    "(--body-read-timeout).",
                    408,
                    param="body",
                    headers={"Connection": "close"},
                )
                await error.to_json_response()(scope, receive, send)
                return
            if message["type"] != "http.request":  # disconnected while sending the body
                await self.app(scope, _replay([message], receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                error = self._too_large()
                error.headers = {"Connection": "close"}
                await error.to_json_response()(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if _is_json(scope) and body.count(b"[") + body.count(b"{") > _DEPTH_CHECK_BRACKETS:
            try:
                json.loads(body)
            except RecursionError:
                error = OpenAIError(
                    "The request body's JSON is nested too deeply to parse.", 400, param="body"
                )
                await error.to_json_response()(scope, receive, send)
                return
            except ValueError:
                pass  # invalid JSON: the route answers that, naming the position
        replayed: Message = {"type": "http.request", "body": body, "more_body": False}
        await self.app(scope, _replay([replayed], receive), send)
