"""End to end: every way a streamed transcription (`stream=true` on /v1/audio/transcriptions
and /v1/audio/translations) ends is visible to the client.

One live server serves two tiny Whisper engines running in this process, so the tests can
break them:
- a window that fails in the engine after the first chunk: an OpenAI error event, then
  `data: [DONE]`; the server stays healthy and serves the next request;
- a prompt that leaves no room for the transcript: a 400 before any stream starts;
- a client that leaves mid-stream: its engine request is aborted, nothing keeps running;
- an engine stopping under a stream: the final chunk says "abort", then [DONE];
- a failing model step: an error event and [DONE]; /health turns 503;
- a graceful shutdown whose deadline passes under a stream: the shutdown error event, then
  [DONE], and the window is aborted (a server of its own).
Tests run in file order (the two before the last break their engines for good).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

pytest.importorskip("mono_llm.audio")
soundfile = pytest.importorskip("soundfile")
numpy = pytest.importorskip("numpy")

VICTIM, BYSTANDER = "victim", "bystander"
MAX_MODEL_LEN = 64  # short windows keep the random model's streams quick
LEAK = re.compile(r"Traceback|File \"|\.py\b|site-packages")
TIMEOUT = 60  # a client waiting longer than this means a hang


def _engine(name: str) -> Any:
    from mono_llm.core import AsyncEngineArgs
    from mono_llm.core.async_llm import AsyncLLM
    from mono_llm.core.testing import fixture_path

    return AsyncLLM.from_engine_args(
        AsyncEngineArgs(model=str(fixture_path("tiny-whisper")), served_model_name=name,
                        max_model_len=MAX_MODEL_LEN, disable_log_stats=True,
                        engine_process=False)  # failures are injected in-process
    )  # fmt: skip


@pytest.fixture(scope="module")
def served(server_factory: Any) -> Iterator[tuple[str, Any, Any]]:
    from mono_llm.openai_api import build_app

    victim, bystander = _engine(VICTIM), _engine(BYSTANDER)
    with server_factory(build_app([victim, bystander])) as running:
        deadline = time.monotonic() + 300
        while httpx.get(f"{running.base_url}/ready").status_code != 200:
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.2)
        yield running.base_url, victim, bystander
    victim.shutdown()
    bystander.shutdown()


@pytest.fixture(scope="module")
def wav() -> bytes:
    """Two seconds of a 440 Hz tone (the random model's transcript is noise anyway)."""
    rate = 16000
    t = numpy.arange(2 * rate) / rate
    out = io.BytesIO()
    soundfile.write(out, 0.3 * numpy.sin(2 * numpy.pi * 440 * t), rate, format="WAV")
    return out.getvalue()


@contextlib.contextmanager
def _check_stop_hook(engine: Any, hook: Callable[[Any], None]) -> Iterator[None]:
    """Run `hook(seq)` before every stop check of the engine's transcription requests."""
    step = engine.engine.generation_step
    real = step.check_stop

    def check_stop(seq: Any, token: int) -> Any:
        if seq.request_id.startswith("trsc-"):
            hook(seq)
        return real(seq, token)

    step.check_stop = check_stop
    try:
        yield
    finally:
        step.check_stop = real


def _stream(
    base: str, model: str, wav: bytes, started: threading.Event | None = None, **fields: str
) -> tuple[int, list[Any]]:
    """(HTTP status, the decoded `data:` events) of one streamed transcription."""
    data = {"model": model, "stream": "true", "language": "en", **fields}
    events: list[Any] = []
    with httpx.stream("POST", f"{base}/v1/audio/transcriptions", files={"file": ("a.wav", wav)},
                      data=data, timeout=TIMEOUT) as response:  # fmt: skip
        for line in response.iter_lines():
            if line.startswith("data: "):
                payload = line[len("data: ") :]
                events.append(payload if payload == "[DONE]" else json.loads(payload))
                if started is not None:
                    started.set()
    return response.status_code, events


def _assert_error(payload: dict, code: int, needle: str) -> None:
    assert set(payload) == {"error"}, payload
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code, error
    assert needle in error["message"] and not LEAK.search(json.dumps(payload)), error


def _assert_complete(status: int, events: list[Any]) -> None:
    """A stream that ended normally: chunks, the final chunk, usage, then [DONE]."""
    assert status == 200 and events[-1] == "[DONE]", events[-3:]
    assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] > 0
    assert events[-3]["choices"][0]["finish_reason"] in ("stop", "length")
    assert not any("error" in e for e in events[:-1])


def test_a_window_failing_after_the_first_chunk_ends_with_an_error_event_then_done(
    served: tuple[str, Any, Any], wav: bytes
) -> None:
    base, victim, _ = served

    def poison(seq: Any) -> None:
        if seq.num_output_tokens == 4:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "simulated detokenizer error")

    with _check_stop_hook(victim, poison):
        status, events = _stream(base, VICTIM, wav, stream_include_usage="true")
    assert status == 200 and events[-1] == "[DONE]", events[-3:]
    _assert_error(events[-2], 500, "simulated detokenizer error")
    assert events[-2]["error"]["type"] == "InternalServerError"
    chunks = events[:-2]
    assert chunks and all(c["object"] == "transcription.chunk" for c in chunks)
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)  # no final chunk
    # The server stays healthy: the engine dropped the one request, the next ones run.
    assert httpx.get(f"{base}/health").status_code == 200
    _assert_complete(*_stream(base, VICTIM, wav, stream_include_usage="true"))
    plain = httpx.post(f"{base}/v1/audio/transcriptions", files={"file": ("a.wav", wav)},
                       data={"model": VICTIM, "language": "en"}, timeout=TIMEOUT)  # fmt: skip
    assert plain.status_code == 200 and "text" in plain.json()
    assert not victim.engine.has_unfinished_requests()


def test_a_prompt_without_room_is_a_400_before_the_stream(
    served: tuple[str, Any, Any], wav: bytes
) -> None:
    base, _, _ = served
    prompt = " ".join(["words"] * 100)  # more previous-text tokens than the context holds
    for stream in ("true", "false"):
        response = httpx.post(f"{base}/v1/audio/transcriptions", files={"file": ("a.wav", wav)},
                              data={"model": VICTIM, "stream": stream, "prompt": prompt},
                              timeout=TIMEOUT)  # fmt: skip
        assert response.status_code == 400, (stream, response.text)
        assert response.headers["content-type"].startswith("application/json")
        _assert_error(response.json(), 400, "no room for the transcript")
        assert response.json()["error"]["param"] == "prompt"


def test_a_client_leaving_mid_stream_aborts_its_request(
    served: tuple[str, Any, Any], wav: bytes
) -> None:
    base, victim, _ = served
    tokens: list[int] = []

    def slow(seq: Any) -> None:
        tokens.append(seq.num_output_tokens)
        time.sleep(0.05)  # a window of ~60 tokens now takes seconds

    with _check_stop_hook(victim, slow):
        with httpx.stream("POST", f"{base}/v1/audio/transcriptions",
                          files={"file": ("a.wav", wav)},
                          data={"model": VICTIM, "stream": "true", "language": "en"},
                          timeout=TIMEOUT) as response:  # fmt: skip
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data: {"))
        # Leaving the block closed the connection mid-stream.
        deadline = time.monotonic() + 20
        while victim.engine.has_unfinished_requests():
            assert time.monotonic() < deadline, "the request kept running after the disconnect"
            time.sleep(0.05)
    assert len(tokens) < MAX_MODEL_LEN - 8, "the window decoded to its end"
    assert httpx.get(f"{base}/health").status_code == 200


def test_an_engine_stopping_under_a_stream_ends_it_with_abort(
    served: tuple[str, Any, Any], wav: bytes
) -> None:
    base, _, bystander = served
    started = threading.Event()
    results: dict[str, Any] = {}
    with _check_stop_hook(bystander, lambda seq: time.sleep(0.05)):
        reader = threading.Thread(
            target=lambda: results.update(s=_stream(base, BYSTANDER, wav, started))
        )
        reader.start()
        assert started.wait(TIMEOUT)
        bystander.shutdown()
        reader.join(TIMEOUT)
    assert not reader.is_alive(), "the stream hung after the engine stopped"
    status, events = results["s"]
    assert status == 200 and events[-1] == "[DONE]", events[-3:]
    assert events[-2]["choices"][0]["finish_reason"] == "abort"


def test_a_failing_model_step_ends_the_stream_with_an_error_event_then_done(
    served: tuple[str, Any, Any], wav: bytes
) -> None:
    base, victim, _ = served
    runner = victim.engine.model_runner
    real_execute = runner.execute
    started, armed = threading.Event(), threading.Event()

    def execute(batch: Any) -> Any:
        if armed.is_set():
            raise RuntimeError("simulated device failure")
        time.sleep(0.02)
        return real_execute(batch)

    runner.execute = execute
    results: dict[str, Any] = {}
    reader = threading.Thread(target=lambda: results.update(s=_stream(base, VICTIM, wav, started)))
    reader.start()
    assert started.wait(TIMEOUT)
    armed.set()
    reader.join(TIMEOUT)
    assert not reader.is_alive(), "the stream hung after the engine died"
    status, events = results["s"]
    assert status == 200 and events[-1] == "[DONE]", events[-3:]
    _assert_error(events[-2], 500, "simulated device failure")
    assert httpx.get(f"{base}/health").status_code == 503
    late = httpx.post(f"{base}/v1/audio/transcriptions", files={"file": ("a.wav", wav)},
                      data={"model": VICTIM, "stream": "true", "language": "en"},
                      timeout=TIMEOUT)  # fmt: skip
    assert late.status_code == 503  # refused before the stream starts
    _assert_error(late.json(), 503, "engine")


def test_a_stream_cut_at_the_graceful_shutdown_deadline_ends_in_band(wav: bytes) -> None:
    import signal
    import socket

    from mono_llm.openai_api import ServerArgs, build_app
    from mono_llm.openai_api.cli.serve import draining_server, uvicorn_config

    engine = _engine("drained")
    args = ServerArgs(timeout_graceful_shutdown=1, uvicorn_log_level="warning")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        args.port = sock.getsockname()[1]
    server = draining_server(uvicorn_config(build_app([engine], args), args, "127.0.0.1"))
    thread = threading.Thread(target=server.run, daemon=True)
    base = f"http://127.0.0.1:{args.port}"
    try:
        with _check_stop_hook(engine, lambda seq: time.sleep(0.1)):  # ~6 s per window
            thread.start()
            deadline = time.monotonic() + 120
            while True:
                assert thread.is_alive() and time.monotonic() < deadline, "no server"
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                        break
                time.sleep(0.1)
            started = threading.Event()
            results: dict[str, Any] = {}
            reader = threading.Thread(
                target=lambda: results.update(s=_stream(base, "drained", wav, started))
            )
            reader.start()
            assert started.wait(TIMEOUT)
            server.handle_exit(signal.SIGTERM, None)
            reader.join(TIMEOUT)
            assert not reader.is_alive(), "the stream hung through the shutdown"
            status, events = results["s"]
            assert status == 200 and events[-1] == "[DONE]", events[-3:]
            _assert_error(events[-2], 503, "shutting down")
            deadline = time.monotonic() + 20
            while engine.engine.has_unfinished_requests():
                assert time.monotonic() < deadline, "the window ran on after the stream was cut"
                time.sleep(0.05)
        thread.join(30)
        assert not thread.is_alive()
    finally:
        engine.shutdown()
