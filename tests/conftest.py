"""End-to-end fixtures: a real uvicorn server on a free local port, started once per session.

The session server serves two tiny fixture models (tiny-llama and tiny-qwen2) from one
process with an API key, request-id headers and offline docs on, as a user would run it:
`mono-llm serve <llama> <qwen2> --served-model-name tiny-llama tiny-qwen2
--api-key token-abc123 --enable-request-id-headers --enable-offline-docs
--enable-prompt-tokens-details --enable-auto-tool-choice --tool-call-parser hermes`.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

API_KEY = "token-abc123"
LLAMA = "tiny-llama"
QWEN = "tiny-qwen2"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mono_llm_command() -> list[str]:
    """The `mono-llm` console script beside this interpreter, or the module form of it."""
    script = Path(sys.executable).with_name("mono-llm")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mono_llm.openai_api.cli"]


def wait_ready(
    base: str,
    process: subprocess.Popen,
    log_path: Path,
    timeout_s: float = 120,
    **client_kwargs: Any,
) -> None:
    """Poll a `mono-llm serve` subprocess's /ready until 200; fail with its log if it exits or
    the time runs out."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        assert process.poll() is None, log_path.read_text()
        try:
            if httpx.get(f"{base}/ready", timeout=2, **client_kwargs).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.2)


@dataclass
class RunningServer:
    base_url: str  # http://127.0.0.1:PORT
    app: Any
    api_key: str | None

    @property
    def v1(self) -> str:
        return f"{self.base_url}/v1"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def openai(self, **kwargs: Any) -> Any:
        import openai

        kwargs.setdefault("api_key", self.api_key or "unused")
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 60)
        return openai.OpenAI(base_url=self.v1, **kwargs)


@contextlib.contextmanager
def serve_in_thread(app: Any, api_key: str | None = None) -> Iterator[RunningServer]:
    """Run `app` under uvicorn in a background thread until the block ends."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn exited during startup (see the log above)")
        if time.monotonic() > deadline:
            raise TimeoutError("uvicorn did not start within 120 s")
        time.sleep(0.05)
    try:
        yield RunningServer(f"http://127.0.0.1:{port}", app, api_key)
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="session")
def server_factory() -> Any:
    """`serve_in_thread` for tests that need a server configured their own way."""
    return serve_in_thread


@pytest.fixture(scope="session")
def server() -> Iterator[RunningServer]:
    from mono_llm.core import AsyncEngineArgs
    from mono_llm.core.testing import fixture_path
    from mono_llm.openai_api import ServerArgs, build_app

    engines = [
        AsyncEngineArgs(model=str(fixture_path(LLAMA)), served_model_name=LLAMA),
        AsyncEngineArgs(model=str(fixture_path(QWEN)), served_model_name=QWEN),
    ]
    args = ServerArgs(
        api_key=[API_KEY],
        enable_request_id_headers=True,
        enable_offline_docs=True,
        enable_prompt_tokens_details=True,
        enable_auto_tool_choice=True,
        tool_call_parser="hermes",
    )
    with serve_in_thread(build_app(engines, args), api_key=API_KEY) as running:
        yield running


@pytest.fixture(scope="session")
def client(server: RunningServer) -> Any:
    return server.openai()


@pytest.fixture(scope="session")
def scrape_metrics(server: RunningServer) -> Any:
    """A function: GET /metrics as {'name{labels}': value}."""
    import httpx

    def scrape() -> dict[str, float]:
        text = httpx.get(f"{server.base_url}/metrics", timeout=30).text
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                values[key] = float(value)
        return values

    return scrape
