"""End to end: request-level chat templates are refused unless the server trusts them, and
even then a hostile template (endless loops, huge strings) costs a bounded time in a killable
worker process while the server keeps answering everyone else."""

from __future__ import annotations

import concurrent.futures
import os
import time
from pathlib import Path

import httpx
import pytest

from mono_llm.core import AsyncEngineArgs
from mono_llm.core.testing import fixture_path
from mono_llm.openai_api.template_pool import RENDER_TIMEOUT_S

MESSAGES = [{"role": "user", "content": "hi"}]
RUNAWAY = (
    "{% for i in range(10000) %}{% for j in range(10000) %}{% for k in range(10000) %}"
    "{% endfor %}{% endfor %}{% endfor %}"
)


def test_untrusted_server_refuses_request_templates(server) -> None:
    from tests.conftest import LLAMA

    with httpx.Client(base_url=server.base_url, headers=server.headers(), timeout=30) as http:
        for path, body in (
            ("/v1/chat/completions", {"model": LLAMA, "messages": MESSAGES, "max_tokens": 1}),
            ("/tokenize", {"model": LLAMA, "messages": MESSAGES}),
        ):
            response = http.post(path, json={**body, "chat_template": "{{ 'x' }}"})
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["param"] == "chat_template"
            assert "--trust-request-chat-template" in error["message"]
        # The server's own template still renders (in the worker pool).
        response = http.post("/tokenize", json={"model": LLAMA, "messages": MESSAGES})
        assert response.status_code == 200 and response.json()["count"] > 0


@pytest.fixture(scope="module")
def trusted(server_factory):
    from mono_llm.openai_api import ServerArgs, build_app

    engines = [AsyncEngineArgs(model=str(fixture_path("tiny-llama")), served_model_name="m",
                               max_model_len=64)]  # fmt: skip
    app = build_app(engines, ServerArgs(trust_request_chat_template=True))
    with server_factory(app) as running:
        yield running.base_url


def _workers() -> list[int]:
    """Pids of this process's template workers."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and b"template_worker" in cmdline:
            pids.append(int(entry.name))
    return pids


def _chat(http: httpx.Client, template: str) -> httpx.Response:
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 1, "chat_template": template}
    return http.post("/v1/chat/completions", json=body)


def test_runaway_template_is_stopped_and_the_server_stays_responsive(trusted) -> None:
    with (
        httpx.Client(base_url=trusted, timeout=60) as http,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        start = time.monotonic()
        pending = pool.submit(_chat, http, RUNAWAY)
        health_times = []
        while not pending.done():
            t0 = time.monotonic()
            assert httpx.get(f"{trusted}/health", timeout=5).status_code == 200
            health_times.append(time.monotonic() - t0)
            time.sleep(0.2)
        response = pending.result()
        elapsed = time.monotonic() - start
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == "chat_template" and "stopped" in error["message"]
        assert elapsed < RENDER_TIMEOUT_S + 10
        assert max(health_times) < 1.0, health_times  # the event loop never froze
        # The runaway worker was killed: no worker keeps spinning.
        time.sleep(0.5)
        assert len(_workers()) <= 2


@pytest.mark.parametrize(
    "template",
    [
        "{{ 'x' * 400000000 }}",
        "{{ 'x'.ljust(400000000) }}",
        "{% set s = namespace(v='xxxxxxxxxxxxxxxx') %}{% for i in range(40) %}"
        "{% set s.v = s.v + s.v %}{% endfor %}{{ s.v }}",
        "{{ 7 ** 100000000 }}",
        "{{ range(10**9) | list }}",
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    ],
    ids=["repeat", "ljust", "doubling", "power", "range", "recursion"],
)
def test_memory_and_recursion_bombs_are_400s(trusted, template) -> None:
    with httpx.Client(base_url=trusted, timeout=60) as http:
        start = time.monotonic()
        response = _chat(http, template)
        assert response.status_code == 400, response.text[:300]
        assert response.json()["error"]["param"] == "chat_template"
        assert time.monotonic() - start < RENDER_TIMEOUT_S + 10


def test_trusted_request_template_renders_and_tokenizes(trusted) -> None:
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    with httpx.Client(base_url=trusted, timeout=60) as http:
        response = http.post(
            "/tokenize",
            json={"model": "m", "messages": MESSAGES, "chat_template": template,
                  "return_token_strs": True},
        )  # fmt: skip
        assert response.status_code == 200, response.text
        assert _chat(http, template).status_code == 200
        assert http.get("/health").status_code == 200
