"""The header deadline and size bound, on both uvicorn HTTP parsers (httptools and h11).

A response may be complete while its request's body is still arriving; those body bytes are not
the next request's headers, so the connection stays usable for the next request.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mono_llm.openai_api.http_limits import limited_http_protocol

HEADER_LIMIT = 4096


async def _answer_without_reading_the_body(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")],
        }
    )
    await send({"type": "http.response.body", "body": b"ok"})  # fmt: skip


@contextlib.contextmanager
def _serve(base: type) -> Iterator[tuple[str, int]]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        _answer_without_reading_the_body,
        host="127.0.0.1",
        port=port,
        http=limited_http_protocol(0.5, HEADER_LIMIT, base=base),
        lifespan="off",
        log_level="warning",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        thread.join(10)


def _read_response(sock: socket.socket) -> bytes:
    """One response with a content-length body (the test app's only kind)."""
    received = b""
    while b"\r\n\r\n" not in received:
        data = sock.recv(65536)
        assert data, f"closed after {received!r}"
        received += data
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))  # fmt: skip
    while len(body) < length:
        data = sock.recv(65536)
        assert data, "closed mid-body"
        body += data
    return head.split(b"\r\n", 1)[0] + b" " + body


def _closed_within(sock: socket.socket, seconds: float) -> bytes:
    sock.settimeout(seconds)
    received = b""
    while data := sock.recv(65536):
        received += data
    return received


@pytest.fixture(params=[HttpToolsProtocol, H11Protocol], ids=["httptools", "h11"])
def server(request) -> Iterator[tuple[str, int]]:
    with _serve(request.param) as address:
        yield address


def test_a_body_arriving_after_its_response_is_not_read_as_headers(server) -> None:
    body_size = HEADER_LIMIT * 5
    with socket.create_connection(server, timeout=5) as sock:
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % body_size)
        assert _read_response(sock) == b"HTTP/1.1 200 OK ok"
        for _ in range(5):
            sock.sendall(b"y" * HEADER_LIMIT)
            time.sleep(0.01)
        sock.sendall(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(sock) == b"HTTP/1.1 200 OK ok"


def test_headers_past_the_bound_are_431(server) -> None:
    with socket.create_connection(server, timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * (HEADER_LIMIT * 2))
        answer = _closed_within(sock, 5)
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]


def test_headers_past_the_deadline_close_the_connection(server) -> None:
    with socket.create_connection(server, timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        start = time.monotonic()
        assert _closed_within(sock, 5) == b""
        assert time.monotonic() - start < 3
    with socket.create_connection(server, timeout=5) as sock:  # one that sends nothing
        start = time.monotonic()
        assert _closed_within(sock, 5) == b""
        assert time.monotonic() - start < 3


def test_keep_alive_requests_each_get_their_own_deadline(server) -> None:
    with socket.create_connection(server, timeout=5) as sock:
        for path in (b"/a", b"/b", b"/c"):
            time.sleep(0.3)  # together past the 0.5 s deadline; each request within it
            sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _read_response(sock) == b"HTTP/1.1 200 OK ok"
