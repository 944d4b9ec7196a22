"""`mono-llm bench serve` against the session server: every request streams exactly the asked
number of tokens, the latency summaries are consistent, failures are counted, not hidden."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mono_llm.openai_api.cli import main as cli_main


def _bench(server, tmp_path: Path, *extra: str, model: str = "tiny-llama") -> tuple[int, dict]:
    out = tmp_path / "bench.json"
    code = cli_main(
        ["bench", "serve", "--base-url", server.base_url, "--model", model,
         "--api-key", server.api_key, "--random-input-len", "16", "--random-output-len", "6",
         "--output-json", str(out), *extra]
    )  # fmt: skip
    return code, json.loads(out.read_text())


def test_bench_serve_reports_latencies_and_throughput(server, tmp_path: Path) -> None:
    code, summary = _bench(server, tmp_path, "--num-prompts", "6", "--max-concurrency", "3")
    assert code == 0, summary["errors"]
    assert summary["completed"] == 6 and summary["failed"] == 0
    assert summary["total_output_tokens"] == 6 * 6
    assert summary["output_throughput_tok_s"] > 0
    for key in ("ttft_ms", "itl_ms", "e2e_ms"):
        stats = summary[key]
        assert 0 < stats["p50"] <= stats["p99"], (key, stats)
        assert not math.isnan(stats["mean"])
    assert summary["ttft_ms"]["p99"] <= summary["e2e_ms"]["p99"]


def test_bench_serve_request_rate_and_text_prompts(server, tmp_path: Path) -> None:
    code, summary = _bench(
        server, tmp_path, "--num-prompts", "3", "--request-rate", "20", "--prompt-kind", "text"
    )
    assert code == 0 and summary["completed"] == 3
    assert summary["request_rate"] == 20


def test_bench_serve_counts_failures_and_exits_non_zero(server, tmp_path: Path) -> None:
    code, summary = _bench(server, tmp_path, "--num-prompts", "2", model="no-such-model")
    assert code == 1
    assert summary["failed"] == 2 and summary["completed"] == 0
    assert any("404" in e for e in summary["errors"]), summary["errors"]


def test_bench_serve_refuses_bad_flags(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_main(["bench", "serve", "--model", "m", "--num-prompts", "0"])
    assert exc.value.code == 2
    assert "--num-prompts" in capsys.readouterr().err
