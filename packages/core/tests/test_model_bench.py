"""mono_llm.core.bench on the tiny model (small workloads: the logic, not the numbers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mono_llm.core import LLM
from mono_llm.core.bench import (
    Workload,
    format_table,
    main,
    main_latency,
    main_throughput,
    run_workload,
    runner_timing,
)
from mono_llm.core.testing import fixture_path
from mono_llm.core.worker.model_runner import decode_graph_sizes


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(str(fixture_path("tiny-llama")), max_num_seqs=4, max_model_len=256)


def test_single_request_workload_reports_ttft_and_decode_rate(llm: LLM) -> None:
    result = run_workload(llm, Workload("B", 1, 12, 6, "tiny B"), runs=3, full_warmup=False, seed=0)
    assert len(result.runs_s) == 3 and len(result.ttft_s) == 3
    assert 0 < result.ttft_ms < 1000 * result.elapsed_s
    assert result.decode_tok_s is not None and result.decode_tok_s > 0
    assert result.decode_ms_per_token == pytest.approx(1000 / result.decode_tok_s)
    assert result.output_tok_s == pytest.approx(6 / result.elapsed_s)
    table = format_table([result])
    assert "tiny B" in table and "ms/tok" in table


def test_batch_workload_counts_tokens(llm: LLM) -> None:
    result = run_workload(llm, Workload("C", 3, 20, 4, "tiny C"), runs=1, full_warmup=True, seed=5)
    assert result.ttft_ms is None
    assert result.total_tok_s == pytest.approx(3 * 24 / result.elapsed_s)


def test_runner_timing_on_cpu(llm: LLM) -> None:
    timings = runner_timing(llm.llm_engine.model_runner, context_len=30)
    assert {"decode_bs1_step_ms", "prefill_1x128_step_ms"} <= set(timings)
    assert all(v > 0 for v in timings.values())


def test_cli_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["--model", str(fixture_path("tiny-qwen2")), "--workload", "B:1", "--max-num-seqs", "2"]
    assert main([*args, "--max-model-len", "1024", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["results"][0]["workload"] == "B"
    assert report["results"][0]["decode_tok_s"] > 0
    with pytest.raises(SystemExit):
        main(["--model", str(fixture_path("tiny-qwen2")), "--workload", "D"])


def test_throughput_and_latency_commands(tmp_path: Path) -> None:
    model = str(fixture_path("tiny-llama"))
    common = ["--model", model, "--max-model-len", "256", "--max-num-seqs", "4"]
    out = tmp_path / "throughput.json"
    assert main_throughput(
        [*common, "--num-prompts", "3", "--input-len", "8", "--output-len", "4",
         "--num-iters", "1", "--output-json", str(out)]
    ) == 0  # fmt: skip
    result = json.loads(out.read_text())["result"]
    assert result["num_requests"] == 3 and result["output_tok_s"] > 0
    out = tmp_path / "latency.json"
    assert main_latency(
        [*common, "--input-len", "8", "--output-len", "5", "--num-iters", "2",
         "--output-json", str(out)]
    ) == 0  # fmt: skip
    result = json.loads(out.read_text())["result"]
    assert len(result["runs_s"]) == 2 and result["decode_tok_s"] > 0 and result["ttft_ms"] > 0


def test_decode_graph_sizes() -> None:
    assert decode_graph_sizes(1) == [1]
    assert decode_graph_sizes(8) == [1, 2, 4, 8]
    assert decode_graph_sizes(48) == [1, 2, 4, 8, 16, 32, 48]
    assert decode_graph_sizes(256)[-1] == 256
