"""A small pool of chat-template worker processes with a deadline per render.

A thread cannot be stopped, so a runaway template would keep a CPU busy forever; a process
can be killed. Each render goes to an idle worker (`template_worker`); past its deadline the
worker is killed and replaced, and the caller gets `TemplateTimeoutError`. `render` blocks:
callers run it off the event loop (a worker thread).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import select
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Seconds one render may take once a worker has it (a real chat template renders in
# milliseconds).
RENDER_TIMEOUT_S = 5.0
# Seconds a render may wait for a free worker before the server reports itself busy (503).
QUEUE_TIMEOUT_S = 30.0
_STARTUP_TIMEOUT_S = 60.0


class TemplateRenderError(ValueError):
    """The template raised, or passed a sandbox limit; the message is the template's."""


class TemplateTimeoutError(TemplateRenderError):
    """The render passed its deadline; the worker running it was killed."""


class TemplatePoolBusyError(RuntimeError):
    """No worker became free in time: the server is overloaded, not the request wrong."""


class _Worker:
    def __init__(self) -> None:
        # The worker imports this package from the same place the server does.
        src = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mono_llm.openai_api.template_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
            encoding="utf-8",
        )
        self._read_line(_STARTUP_TIMEOUT_S)  # {"ready": true}

    def _read_line(self, timeout: float) -> dict[str, Any]:
        stdout = self.process.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], max(timeout, 0))
        if not ready:
            raise TemplateTimeoutError("timeout")
        line = stdout.readline()
        if not line:
            raise TemplateRenderError("the template worker exited (out of memory?).")
        return json.loads(line)

    def render(self, job: dict[str, Any], timeout: float) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(job, ensure_ascii=False, default=str) + "\n")
        self.process.stdin.flush()
        answer = self._read_line(timeout)
        if "error" in answer:
            raise TemplateRenderError(answer["error"])
        return answer["text"]

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


class TemplatePool:
    """Up to `size` worker processes, started on first use (or by `start`)."""

    def __init__(self, size: int | None = None, timeout: float = RENDER_TIMEOUT_S) -> None:
        size = size or min(4, max(2, os.cpu_count() or 2))
        self.size = size
        self.timeout = timeout
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._started = 0
        self._lock = threading.Lock()
        self._closed = False

    def start(self) -> None:
        """Start one worker now, so the first chat request does not wait for it."""
        worker = self._acquire(_STARTUP_TIMEOUT_S)
        self._idle.put(worker)

    def _acquire(self, timeout: float) -> _Worker:
        with self._lock:
            if self._closed:
                raise TemplateRenderError("the server is shutting down.")
            try:
                return self._idle.get_nowait()
            except queue.Empty:
                spawn = self._started < self.size
                if spawn:
                    self._started += 1
        if spawn:
            try:
                return _Worker()
            except BaseException:
                with self._lock:
                    self._started -= 1
                raise
        try:
            return self._idle.get(timeout=timeout)
        except queue.Empty:
            raise TemplatePoolBusyError(
                f"every chat-template worker stayed busy for {timeout:g} s"
            ) from None

    def render(self, job: dict[str, Any]) -> str:
        """The rendered text; TemplateRenderError / TemplateTimeoutError otherwise."""
        worker = self._acquire(QUEUE_TIMEOUT_S)
        try:
            text = worker.render(job, self.timeout)
        except TemplateTimeoutError:
            self._discard(worker)
            raise TemplateTimeoutError(
                f"rendering took longer than {self.timeout:g} s and was stopped."
            ) from None
        except TemplateRenderError as exc:
            if worker.process.poll() is not None:
                self._discard(worker)
            else:
                self._idle.put(worker)
            raise exc from None
        except BaseException:
            self._discard(worker)
            raise
        self._idle.put(worker)
        return text

    def _discard(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            self._started -= 1

    def close(self) -> None:
        with self._lock:
            self._closed = True
        while True:
            try:
                self._idle.get_nowait().kill()
            except queue.Empty:
                return
