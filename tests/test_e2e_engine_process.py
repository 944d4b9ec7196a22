"""`mono-llm serve` with the engine in its own process (the default): the engine process is a
child of the server; when it is killed, in-flight streams end with an error, /health answers
503 and the server exits non-zero; when the server is killed, the engine process follows it
(no orphan holding the GPU)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from mono_llm.core.testing import fixture_path
from tests.conftest import free_port, mono_llm_command, wait_ready


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        kids += [int(k) for k in text]
    return kids


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _start(tmp_path: Path) -> tuple[subprocess.Popen, str, Path, int]:
    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*mono_llm_command(), "serve", str(fixture_path("tiny-llama")), "--served-model-name",
             "tiny", "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "512",
             "--disable-uvicorn-access-log", "--disable-log-stats"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    wait_ready(base, process, log_path, timeout_s=180)
    found = re.search(r"engine process (\d+) ready", log_path.read_text())
    assert found, log_path.read_text()
    engine_pid = int(found.group(1))
    assert engine_pid in _children(process.pid)
    return process, base, log_path, engine_pid


def test_killed_engine_process_fails_streams_health_and_exits_the_server(
    tmp_path: Path,
) -> None:
    process, base, log_path, engine_pid = _start(tmp_path)
    try:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=60)
        reply = client.completions.create(model="tiny", prompt="hello", max_tokens=5)
        assert reply.usage.completion_tokens == 5
        assert httpx.get(f"{base}/health", timeout=5).status_code == 200

        outcome: list[object] = []
        started = threading.Event()

        def consume() -> None:
            try:
                stream = client.completions.create(
                    model="tiny", prompt="x", max_tokens=400, stream=True,
                    extra_body={"ignore_eos": True},
                )  # fmt: skip
                for chunk in stream:
                    started.set()
                    outcome.append(chunk.choices[0].finish_reason if chunk.choices else None)
            except Exception as exc:  # the error the client sees
                outcome.append(exc)
            finally:
                started.set()

        consumer = threading.Thread(target=consume)
        consumer.start()
        assert started.wait(60)
        os.kill(engine_pid, signal.SIGKILL)
        consumer.join(60)
        assert not consumer.is_alive(), "the stream hung after the engine process died"
        assert "length" not in outcome, "the stream finished as if nothing happened"
        assert isinstance(outcome[-1], Exception), outcome[-3:]

        # /health answers 503 until the server, about a second later, shuts down.
        statuses = set()
        deadline = time.monotonic() + 30
        while process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                statuses.add(httpx.get(f"{base}/health", timeout=2).status_code)
            time.sleep(0.1)
        assert 200 not in statuses
        assert process.wait(30) == 1, log_path.read_text()[-3000:]
        log_text = log_path.read_text()
        assert "engine process exited unexpectedly" in log_text, log_text[-3000:]
        assert _gone(engine_pid)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_engine_process_exits_when_the_server_is_killed(tmp_path: Path) -> None:
    process, _base, _log_path, engine_pid = _start(tmp_path)
    try:
        process.kill()  # no shutdown code runs: the engine process must notice by itself
        process.wait(30)
        deadline = time.monotonic() + 30
        while not _gone(engine_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _gone(engine_pid), "the engine process outlived the server"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if not _gone(engine_pid):
            os.kill(engine_pid, signal.SIGKILL)
