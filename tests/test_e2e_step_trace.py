"""MONO_LLM_STEP_TRACE under `mono-llm serve`: the engine process traces its steps, the trace
is complete once the server has shut down, and scripts/step_trace_summary.py reads it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import openai

from mono_llm.core.testing import fixture_path
from tests.conftest import free_port, mono_llm_command, wait_ready

ROOT = Path(__file__).resolve().parents[1]
PROMPT = [7, *range(300, 339)]  # 40 tokens: two whole 16-token blocks, then 8 more


def test_serve_writes_the_engine_process_steps_and_the_summary_reads_them(
    tmp_path: Path,
) -> None:
    trace = tmp_path / "trace.jsonl"
    port = free_port()
    log_path = tmp_path / "serve.log"
    env = {**os.environ, "MONO_LLM_STEP_TRACE": str(trace)}
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*mono_llm_command(), "serve", str(fixture_path("tiny-llama")), "--served-model-name",
             "tiny", "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "256",
             "--disable-uvicorn-access-log", "--disable-log-stats"],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, process, log_path, timeout_s=180)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=60)
        for _ in range(2):  # the second time, the prompt's two whole blocks are cached
            stream = client.completions.create(
                model="tiny", prompt=PROMPT, max_tokens=4, temperature=0, stream=True,
                extra_body={"ignore_eos": True},
            )  # fmt: skip
            assert sum(1 for _ in stream) >= 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) in (0, -signal.SIGTERM), log_path.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    records = [json.loads(line) for line in trace.read_text().splitlines()]
    headers = [r for r in records if r.get("event") == "start"]
    steps = [r for r in records if "step" in r]
    assert len(headers) == 1 and headers[0]["pid"] != process.pid  # the engine process
    admitting = [s for s in steps if s["admitted"]][-2:]  # after the server's warm-up
    assert [(s["admitted"], s["cached_tokens"]) for s in admitting] == [(1, 0), (1, 32)]
    assert all(len(s["ttft_ms"]) == 1 and s["ttft_ms"][0] >= s["queue_ms"][0] for s in admitting)
    ours = [s for s in steps if s["step"] >= admitting[0]["step"]]
    assert sum(s["tokens"] for s in ours) == 40 + 3 + 8 + 3  # prompts and decodes

    summary = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "step_trace_summary.py"), str(trace), "--min-requests", "1"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    out = summary.stdout
    assert f"engine pid {headers[0]['pid']}" in out, out
    assert "admitted 1 in 1 steps (32 cached tokens)" in out, out
    assert "arrival -> first token in the engine" in out, out
