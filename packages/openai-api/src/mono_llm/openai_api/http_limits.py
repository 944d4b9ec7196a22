"""Connection-level limits uvicorn lacks: a deadline and a size bound on request headers.

uvicorn closes idle keep-alive connections, but a connection that has sent part of a request's
headers (or nothing at all) is held open forever: thousands of half-sent requests then pin
sockets and memory (slowloris). These protocol classes wrap uvicorn's own (httptools or h11,
picked as uvicorn's "auto" does) and close a connection whose headers are not complete
`header_timeout` seconds after its first byte (or after it opened), or whose headers pass
`max_header_bytes` (431). Bodies have their own deadline in `request_guards`.

"Awaiting headers" follows the request as the parser reads it, not the response: a response can
be complete while its request's body is still arriving (a 413 sent before the body was read, a
GET with a body), and those body bytes must not be counted as the next request's headers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

logger = logging.getLogger("mono_llm.openai_api.http")

_HEADERS_END = b"\r\n\r\n"


class _HeaderLimits:
    """Mixin over a uvicorn HTTP protocol; the parser-specific mixins below say when a request's
    headers are still to come."""

    header_timeout: float = 10.0
    max_header_bytes: int = 64 * 1024

    _header_timer: asyncio.TimerHandle | None = None
    _header_buffer: bytearray | None = None

    def _awaiting_headers(self) -> bool:  # pragma: no cover - a request-state mixin overrides
        raise NotImplementedError

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._start_header_deadline()

    def _start_header_deadline(self) -> None:
        if self._header_timer is None and self.header_timeout > 0:
            loop = asyncio.get_running_loop()
            self._header_timer = loop.call_later(self.header_timeout, self._on_header_timeout)
        if self._header_buffer is None:
            self._header_buffer = bytearray()

    def _clear_header_deadline(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self._header_buffer = None

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        transport = getattr(self, "transport", None)
        if self._awaiting_headers() and transport is not None and not transport.is_closing():
            logger.info(
                "closing a connection whose request headers took over %ss", self.header_timeout
            )
            transport.close()

    def data_received(self, data: bytes) -> None:
        if self._awaiting_headers():
            self._start_header_deadline()
            buffer = self._header_buffer
            assert buffer is not None
            buffer += data[: self.max_header_bytes + len(_HEADERS_END)]
            if buffer.find(_HEADERS_END) != -1:
                self._clear_header_deadline()
            elif len(buffer) > self.max_header_bytes:
                self._clear_header_deadline()
                self._refuse_large_headers()
                return
        super().data_received(data)  # type: ignore[misc]
        if not self._awaiting_headers():
            self._clear_header_deadline()

    def _refuse_large_headers(self) -> None:
        transport = getattr(self, "transport", None)
        if transport is None or transport.is_closing():
            return
        body = b'{"error":{"message":"Request headers too large.","type":"BadRequestError","param":null,"code":431}}'
        transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        # The next request's headers get their own deadline once its first byte arrives; an
        # idle keep-alive connection is uvicorn's (timeout_keep_alive).

    def connection_lost(self, exc: Exception | None) -> None:
        self._clear_header_deadline()
        super().connection_lost(exc)  # type: ignore[misc]


class _HttpToolsRequestState:
    """httptools calls back when a request's head is parsed and when its message ends."""

    _reading_head: bool = True

    def _awaiting_headers(self) -> bool:
        return self._reading_head

    def on_headers_complete(self) -> None:
        self._reading_head = False
        super().on_headers_complete()  # type: ignore[misc]

    def on_message_complete(self) -> None:
        self._reading_head = True
        super().on_message_complete()  # type: ignore[misc]


class _H11RequestState:
    """h11 keeps the client's side IDLE until a request's head has been parsed."""

    def _awaiting_headers(self) -> bool:
        import h11

        return self.conn.their_state is h11.IDLE  # type: ignore[attr-defined]


@functools.cache
def _base_protocol() -> type:
    try:
        import httptools  # noqa: F401
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol


def limited_http_protocol(
    header_timeout: float, max_header_bytes: int, base: type | None = None
) -> type:
    """uvicorn's HTTP protocol class (`base`, else the one uvicorn's "auto" picks) with the
    header deadline and size bound."""
    base = base or _base_protocol()
    from uvicorn.protocols.http.h11_impl import H11Protocol

    state = _H11RequestState if issubclass(base, H11Protocol) else _HttpToolsRequestState
    return type(
        f"Limited{base.__name__}",
        (state, _HeaderLimits, base),
        {"header_timeout": float(header_timeout), "max_header_bytes": int(max_header_bytes)},
    )
