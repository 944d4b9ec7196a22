"""End to end: graceful shutdown does what docs/deployment.md promises, and a dead engine
makes the server exit non-zero so a supervisor restarts it.

Draining: the socket keeps accepting, new API requests get 503 + Retry-After, requests in
flight run on, and a stream still running at the --timeout-graceful-shutdown deadline ends
with an OpenAI-style error event and [DONE].
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from typing import Any

import httpx

from mono_llm.core import AsyncEngineArgs
from mono_llm.core.testing import fixture_path

MODEL = "tiny-llama"


def _start(app: Any, args: Any, target: Any) -> tuple[str, threading.Thread]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        args.port = sock.getsockname()[1]
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{args.port}"
    deadline = time.monotonic() + 120
    while True:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return base, thread
        except httpx.TransportError:
            pass
        time.sleep(0.1)


def test_sigterm_drains_refuses_new_work_and_cuts_streams_in_band() -> None:
    from mono_llm.openai_api import ServerArgs, build_app
    from mono_llm.openai_api.cli.serve import draining_server, uvicorn_config

    engines = [AsyncEngineArgs(model=str(fixture_path(MODEL)), served_model_name=MODEL,
                               max_model_len=1024, disable_log_stats=True)]  # fmt: skip
    args = ServerArgs(timeout_graceful_shutdown=2, uvicorn_log_level="warning")
    app = build_app(engines, args)
    holder: dict[str, Any] = {}

    def run() -> None:
        server = draining_server(uvicorn_config(app, args, "127.0.0.1"))
        holder["server"] = server
        server.run()

    base, thread = _start(app, args, run)
    events: list[str] = []
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 1000, "ignore_eos": True,
            "stream": True}  # fmt: skip

    def consume() -> None:
        with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=60) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    while len(events) < 3:
        time.sleep(0.02)
    started = time.monotonic()
    holder["server"].handle_exit(signal.SIGTERM, None)
    time.sleep(0.3)
    # Draining: the socket still accepts; new work gets 503 + Retry-After; probes answer.
    refused = httpx.post(f"{base}/v1/completions", json={"model": MODEL, "prompt": "x"})
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"] and refused.json()["error"]["code"] == 503
    assert httpx.get(f"{base}/ready").status_code == 503
    assert httpx.get(f"{base}/health").status_code == 200
    reader.join(30)
    assert not reader.is_alive()
    assert 1.5 < time.monotonic() - started < 15
    # The stream ran on until the deadline, then ended with an error event and [DONE].
    assert len(events) > 10
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == 503 and "shutting down" in error["message"]
    thread.join(30)
    assert not thread.is_alive()


def test_a_dead_engine_makes_the_server_exit_with_status_1() -> None:
    from mono_llm.core.async_llm import AsyncLLM
    from mono_llm.openai_api import ServerArgs, build_app
    from mono_llm.openai_api.cli.serve import serve_app

    engine = AsyncLLM.from_engine_args(
        AsyncEngineArgs(model=str(fixture_path(MODEL)), served_model_name=MODEL,
                        max_model_len=128, disable_log_stats=True,
                        engine_process=False)  # the failure is injected into this process
    )  # fmt: skip
    args = ServerArgs(timeout_graceful_shutdown=2, uvicorn_log_level="warning")
    app = build_app(engine, args)
    result: dict[str, int] = {}
    base, thread = _start(app, args, lambda: result.update(code=serve_app(app, args, "127.0.0.1")))
    try:

        def failing_execute(batch: Any) -> Any:
            raise RuntimeError("simulated device failure")

        engine.engine.model_runner.execute = failing_execute
        response = httpx.post(
            f"{base}/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 4}
        )
        assert response.status_code in (500, 503)
        health = httpx.get(f"{base}/health")  # 503 during the brief shutdown
        assert health.status_code == 503
        thread.join(30)
        assert not thread.is_alive() and result["code"] == 1
    finally:
        engine.shutdown()
