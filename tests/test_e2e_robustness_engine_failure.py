"""End to end: failures inside the engine reach every client as an OpenAI error, none hangs.

One live server serves two models from already running engines, so the tests can break one:
- a request whose own processing raises in the engine (a detokenizer error) fails alone with
  a 500 (non-streaming) or an in-band error event (streaming); the others finish;
- a model step that raises ends every request in flight with 500 / an in-band error event,
  turns /health and /ready 503, answers new requests for that model with 503, and leaves the
  other model serving;
- stopping an engine under a live stream ends the stream (finish_reason "abort"), no hang.
Tests run in file order (later ones break the engines for good).
"""

from __future__ import annotations

import json
import re
import threading
import time

import httpx
import pytest

from mono_llm.core import AsyncEngineArgs
from mono_llm.core.testing import fixture_path

VICTIM, BYSTANDER = "victim", "bystander"
LEAK = re.compile(r"Traceback|File \"|\.py\b|site-packages")
TIMEOUT = 60  # a client waiting longer than this means a hang


def _engine(name: str, fixture: str):
    from mono_llm.core.async_llm import AsyncLLM

    return AsyncLLM.from_engine_args(
        AsyncEngineArgs(model=str(fixture_path(fixture)), served_model_name=name,
                        max_model_len=256, disable_log_stats=True,
                        engine_process=False)  # failures are injected in-process
    )  # fmt: skip


@pytest.fixture(scope="module")
def served(server_factory):
    from mono_llm.openai_api import build_app

    victim, bystander = _engine(VICTIM, "tiny-llama"), _engine(BYSTANDER, "tiny-qwen2")
    with server_factory(build_app([victim, bystander])) as running:
        yield running.base_url, victim, bystander
    victim.shutdown()
    bystander.shutdown()


def _body(model: str, stream: bool, **extra) -> dict:
    return {"model": model, "prompt": "hello", "max_tokens": 60, "ignore_eos": True,
            "temperature": 0, "stream": stream, **extra}  # fmt: skip


def _assert_error(payload: dict, code: int, needle: str) -> None:
    assert set(payload) == {"error"}, payload
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code, error
    assert needle in error["message"] and not LEAK.search(json.dumps(payload)), error


def _stream_events(base: str, path: str, body: dict, started: threading.Event | None = None):
    """(HTTP status, the decoded `data:` events); sets `started` at the first event."""
    events: list = []
    with httpx.stream("POST", f"{base}{path}", json=body, timeout=TIMEOUT) as response:
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
            if started is not None:
                started.set()
    return response.status_code, events


def test_a_request_failing_in_the_engine_fails_alone(served) -> None:
    base, victim, _ = served
    core = victim.engine
    real_check_stop = core.generation_step.check_stop

    def check_stop(seq, token):
        if "poison" in seq.request_id and seq.num_output_tokens == 2:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "simulated detokenizer error")
        return real_check_stop(seq, token)

    core.generation_step.check_stop = check_stop
    try:
        results: dict = {}
        healthy = threading.Thread(
            target=lambda: results.update(
                healthy=_stream_events(base, "/v1/completions", _body(VICTIM, True))
            )
        )
        healthy.start()
        poisoned = httpx.post(f"{base}/v1/completions", timeout=TIMEOUT,
                              json=_body(VICTIM, False, request_id="poison-1"))  # fmt: skip
        assert poisoned.status_code == 500
        _assert_error(poisoned.json(), 500, "simulated detokenizer error")
        status, events = _stream_events(
            base, "/v1/chat/completions",
            {"model": VICTIM, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20,
             "stream": True, "request_id": "poison-2"},
        )  # fmt: skip
        assert status == 200 and events[-1] == "[DONE]"
        _assert_error(events[-2], 500, "simulated detokenizer error")
        healthy.join(TIMEOUT)
        status, events = results["healthy"]
        assert status == 200 and events[-1] == "[DONE]"
        assert events[-2]["choices"][0]["finish_reason"] == "length"
    finally:
        core.generation_step.check_stop = real_check_stop
    assert httpx.get(f"{base}/health").status_code == 200
    again = httpx.post(f"{base}/v1/completions", json=_body(VICTIM, False), timeout=TIMEOUT)
    assert again.status_code == 200 and again.json()["usage"]["completion_tokens"] == 60


def test_a_failing_model_step_ends_every_request_and_marks_the_engine_dead(served) -> None:
    base, victim, _ = served
    runner = victim.engine.model_runner
    real_execute = runner.execute
    armed = threading.Event()

    def execute(batch):
        if armed.is_set():
            raise RuntimeError("simulated device failure")
        return real_execute(batch)

    runner.execute = execute
    # Both streams must have started (sent their 200) before the engine fails: a stream whose
    # first output comes after the failure is refused before streaming, with a JSON 503.
    started, chat_started = threading.Event(), threading.Event()
    results: dict = {}
    streams = [
        threading.Thread(target=lambda: results.update(
            completion=_stream_events(base, "/v1/completions", _body(VICTIM, True), started))),
        threading.Thread(target=lambda: results.update(chat=_stream_events(
            base, "/v1/chat/completions",
            {"model": VICTIM, "messages": [{"role": "user", "content": "hi"}],
             "max_tokens": 200, "ignore_eos": True, "stream": True}, chat_started))),
        threading.Thread(target=lambda: results.update(plain=httpx.post(
            f"{base}/v1/completions", json=_body(VICTIM, False, max_tokens=200),
            timeout=TIMEOUT))),
    ]  # fmt: skip
    for thread in streams:
        thread.start()
    assert started.wait(TIMEOUT) and chat_started.wait(TIMEOUT)
    time.sleep(0.05)  # let the plain request reach the engine
    armed.set()
    for thread in streams:
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "a request hung after the engine died"
    for name in ("completion", "chat"):
        status, events = results[name]
        assert status == 200 and events[-1] == "[DONE]", events[-3:]
        _assert_error(events[-2], 500, "simulated device failure")
    plain = results["plain"]
    assert plain.status_code in (500, 503)  # 503 if it reached the engine after the failure
    _assert_error(plain.json(), plain.status_code, "engine")
    health = httpx.get(f"{base}/health")
    assert health.status_code == 503
    _assert_error(health.json(), 503, VICTIM)
    assert httpx.get(f"{base}/ready").status_code == 503
    late = httpx.post(f"{base}/v1/completions", json=_body(VICTIM, False), timeout=TIMEOUT)
    _assert_error(late.json(), 503, "engine")
    late_stream = httpx.post(f"{base}/v1/completions", json=_body(VICTIM, True), timeout=TIMEOUT)
    assert late_stream.status_code == 503  # refused before the stream starts
    other = httpx.post(f"{base}/v1/completions", json=_body(BYSTANDER, False), timeout=TIMEOUT)
    assert other.status_code == 200


def test_an_engine_stopping_under_a_stream_ends_it(served) -> None:
    base, _, bystander = served
    started = threading.Event()
    results: dict = {}
    body = _body(BYSTANDER, True, max_tokens=240)
    thread = threading.Thread(
        target=lambda: results.update(s=_stream_events(base, "/v1/completions", body, started))
    )
    thread.start()
    assert started.wait(TIMEOUT)
    bystander.shutdown()
    thread.join(TIMEOUT)
    assert not thread.is_alive(), "the stream hung after the engine stopped"
    status, events = results["s"]
    assert status == 200 and events[-1] == "[DONE]"
    finish = [c["finish_reason"] for e in events[:-1] if "choices" in e for c in e["choices"]]
    assert finish[-1] in ("abort", "length")
    refused = httpx.post(f"{base}/v1/completions", json=_body(BYSTANDER, False), timeout=TIMEOUT)
    _assert_error(refused.json(), 503, "shut down")
