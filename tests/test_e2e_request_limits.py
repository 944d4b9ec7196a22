"""End to end: no single request may stall or exhaust the server. Oversized and half-sent
requests, deeply nested JSON, batches past the waiting queue, long request ids and huge
logit biases each get a clear answer (or a closed connection), and the server keeps serving.

The server runs under the same uvicorn configuration `mono-llm serve` builds, with small
limits so the tests are quick.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from mono_llm.core import AsyncEngineArgs
from mono_llm.core.errors import MAX_CHARS_PER_TOKEN
from mono_llm.core.testing import fixture_path

MODEL = "gen"
WINDOW = 64
BODY_LIMIT = 256 * 1024
WAITING = 4


@contextlib.contextmanager
def _serve(args) -> Iterator[str]:
    import uvicorn

    from mono_llm.openai_api import build_app
    from mono_llm.openai_api.cli.serve import uvicorn_config

    engines = [
        AsyncEngineArgs(model=str(fixture_path("tiny-llama")), served_model_name=MODEL,
                        max_model_len=WINDOW, max_waiting_requests=WAITING)
    ]  # fmt: skip
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        args.port = sock.getsockname()[1]
    config = uvicorn_config(build_app(engines, args), args, "127.0.0.1")
    config.log_level = "warning"
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{args.port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    from mono_llm.openai_api import ServerArgs

    args = ServerArgs(
        max_request_body_bytes=BODY_LIMIT,
        body_read_timeout=1.5,
        header_read_timeout=1.5,
        max_request_header_bytes=8192,
        enable_request_id_headers=True,
    )
    with _serve(args) as url:
        yield url


@pytest.fixture(scope="module")
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        yield client


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status and error["message"]
    return error


def test_a_body_over_the_limit_is_413_by_content_length(http) -> None:
    body = {"model": MODEL, "prompt": "x" * (BODY_LIMIT + 10), "max_tokens": 1}
    response = http.post("/v1/completions", json=body)
    error = _error(response, 413)
    assert "--max-request-body-bytes" in error["message"] and error["param"] == "body"
    assert response.headers["connection"] == "close"  # the unread body is not drained


def test_a_chunked_body_over_the_limit_is_cut_while_reading(http) -> None:
    sent = []

    def chunks() -> Iterator[bytes]:
        yield b'{"model": "gen", "prompt": "'
        for _ in range(10_000):  # 640 MB if the server read it all
            sent.append(1)
            yield b"x" * 65536

    response = http.post(
        "/v1/completions", content=chunks(), headers={"content-type": "application/json"}
    )
    _error(response, 413)
    assert len(sent) < 1000  # the server answered long before the client finished


def test_a_prompt_that_cannot_fit_is_refused_before_tokenizing(http) -> None:
    text = "a " * (WINDOW * MAX_CHARS_PER_TOKEN // 2 + 1)
    error = _error(
        http.post("/v1/completions", json={"model": MODEL, "prompt": text, "max_tokens": 1}), 400
    )
    assert "characters" in error["message"] and error["param"] == "prompt"
    messages = [{"role": "user", "content": text}]
    error = _error(
        http.post("/v1/chat/completions", json={"model": MODEL, "messages": messages}), 400
    )
    assert "characters" in error["message"]


def test_deeply_nested_json_is_a_400(http) -> None:
    nested = "[" * 100_000 + "]" * 100_000
    for extra in ("", ', "x": "\\ud800"'):  # also through the lone-surrogate check's parse
        body = '{"model": "gen", "prompt": ' + nested + extra + "}"
        response = http.post(
            "/v1/completions", content=body, headers={"content-type": "application/json"}
        )
        error = _error(response, 400)
        assert "nested too deeply" in error["message"]


def test_a_batch_larger_than_the_waiting_queue_is_a_400_naming_the_limit(http) -> None:
    body = {"model": MODEL, "prompt": ["hi"] * (WAITING + 1), "max_tokens": 1}
    error = _error(http.post("/v1/completions", json=body), 400)
    assert "--max-waiting-requests" in error["message"] and error["param"] == "prompt"
    body["prompt"] = ["hi"] * WAITING
    assert http.post("/v1/completions", json=body).status_code == 200


def test_long_request_ids_are_cut_to_256_characters(http) -> None:
    response = http.post(
        "/v1/completions",
        json={"model": MODEL, "prompt": "hi", "max_tokens": 1},
        headers={"X-Request-Id": "h" * 6000},
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "h" * 256
    assert len(response.json()["id"]) < 300
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 1, "request_id": "r" * 100_000}
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 200 and len(response.json()["id"]) < 300


def test_huge_logit_bias_is_clamped_not_refused(http) -> None:
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 3, "temperature": 0,
            "logit_bias": {"7": 1e300}}  # fmt: skip
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    # +100 forces the token, as vLLM's clamp does; 1e300 would overflow the logits to inf.
    assert response.json()["choices"][0]["text"]


def _raw_connection(base_url: str) -> socket.socket:
    host, port = base_url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _closed_within(sock: socket.socket, seconds: float) -> bytes:
    """What the server sent before closing the connection; fails if it stays open."""
    sock.settimeout(seconds)
    received = b""
    while True:
        data = sock.recv(65536)
        if not data:
            return received
        received += data


def test_half_sent_headers_are_dropped(base_url) -> None:
    with _raw_connection(base_url) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-")
        start = time.monotonic()
        _closed_within(sock, 10)
        assert time.monotonic() - start < 6
    with _raw_connection(base_url) as sock:  # a connection that never sends a byte
        start = time.monotonic()
        _closed_within(sock, 10)
        assert time.monotonic() - start < 6


def test_huge_headers_are_431(base_url) -> None:
    with _raw_connection(base_url) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20_000)
        assert b" 431 " in _closed_within(sock, 10).split(b"\r\n", 1)[0] + b" "


def test_half_sent_body_gets_408(base_url) -> None:
    with _raw_connection(base_url) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"model": '
        )
        start = time.monotonic()
        answer = _closed_within(sock, 10)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert time.monotonic() - start < 6


def test_oversized_structured_output_schemas_are_400s(http) -> None:
    props = {f"p{i}": {"type": "integer"} for i in range(2000)}
    schema = {"type": "object", "properties": props}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "big", "schema": schema}}}  # fmt: skip
    start = time.monotonic()
    error = _error(http.post("/v1/chat/completions", json=body), 400)
    assert "properties" in error["message"]
    assert time.monotonic() - start < 10  # refused before compiling (that took ~55 s)


def test_stop_string_caps_are_400s_naming_stop(http) -> None:
    for stop in (["s"] * 129, ["x" * 1025]):
        body = {"model": MODEL, "prompt": "hi", "max_tokens": 2, "stop": stop}
        assert _error(http.post("/v1/completions", json=body), 400)["param"] == "stop"


def test_the_server_still_serves(http) -> None:
    assert http.get("/health").status_code == 200
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
    assert http.post("/v1/completions", json=body).status_code == 200
