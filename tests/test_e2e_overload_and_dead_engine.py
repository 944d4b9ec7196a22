"""Explicit overload (--max-waiting-requests -> 503 + Retry-After) and a dead engine
(/health 503, requests 503), on a server of its own with one sequence slot."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from mono_llm.core import AsyncEngineArgs
from mono_llm.core.testing import fixture_path

MODEL = "tiny-llama"


@pytest.fixture(scope="module")
def small_server(server_factory):
    from mono_llm.core.async_llm import AsyncLLM
    from mono_llm.openai_api import build_app

    engine = AsyncLLM.from_engine_args(
        AsyncEngineArgs(
            model=str(fixture_path(MODEL)),
            served_model_name=MODEL,
            max_num_seqs=1,
            max_waiting_requests=1,
        )
    )
    with server_factory(build_app(engine)) as running:
        yield running, engine
    engine.shutdown()


def _waiting(base: str) -> float:
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith(f'mono_llm:num_requests_waiting{{model_name="{MODEL}"}}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no waiting gauge")


def test_full_waiting_queue_answers_503_with_retry_after(small_server) -> None:
    running, _ = small_server
    url = f"{running.v1}/completions"
    long_body = {"model": MODEL, "prompt": "busy", "max_tokens": 1000, "ignore_eos": True,
                 "stream": True}  # fmt: skip
    with httpx.stream("POST", url, json=long_body, timeout=60) as first:
        # Keep the iterator: dropping it closes the connection, which aborts the request.
        lines = first.iter_lines()
        assert next(lines).startswith("data: {")  # the only sequence slot is now taken
        waiting_result: dict[str, int] = {}

        def second() -> None:
            response = httpx.post(url, json={"model": MODEL, "prompt": "queued", "max_tokens": 2},
                                  timeout=120)  # fmt: skip
            waiting_result["status"] = response.status_code

        queued = threading.Thread(target=second)
        queued.start()
        deadline = time.monotonic() + 20
        while _waiting(running.base_url) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        refused = httpx.post(url, json={"model": MODEL, "prompt": "one too many"}, timeout=30)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "ServiceUnavailableError"
    queued.join(60)  # the first stream closed: the queued request runs
    assert waiting_result["status"] == 200


def test_dead_engine_fails_health_and_requests(small_server) -> None:
    running, engine = small_server
    assert httpx.get(f"{running.base_url}/health").status_code == 200
    engine.shutdown()
    health = httpx.get(f"{running.base_url}/health")
    assert health.status_code == 503 and "error" in health.json()
    response = httpx.post(
        f"{running.v1}/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2}
    )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == 503
