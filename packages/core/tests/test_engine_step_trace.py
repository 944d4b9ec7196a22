"""MONO_LLM_STEP_TRACE: one JSON line per engine step when set, nothing when not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mono_llm.core import LLM, SamplingParams
from mono_llm.core.engine import step_trace
from mono_llm.core.engine.step_trace import ENV_VAR, StepTrace
from mono_llm.core.testing import fixture_path

STEP_FIELDS = {
    "step", "pid", "t", "dur_ms", "cpu_ms", "schedule_ms", "execute_ms", "outputs_ms", "seqs",
    "tokens", "prefill", "decode", "admitted", "cached_tokens", "context_tokens", "max_seq_len",
    "path", "graph_size", "launched_next", "dropped_launches", "waiting", "running", "preempted",
    "queue_ms", "ttft_ms",
}  # fmt: skip
BLOCK_SIZE = 16
PROMPT_LEN = 40  # two full blocks and a partial one


def _llm() -> LLM:
    return LLM(
        str(fixture_path("tiny-llama")),
        max_model_len=128,
        num_gpu_blocks_override=64,
        block_size=BLOCK_SIZE,
        seed=0,
    )


def _read(path: Path) -> tuple[list[dict], list[dict]]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in records if r.get("event") == "start"], [r for r in records if "step" in r]


def test_enabled_writes_one_line_per_step_with_its_composition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "trace.jsonl"
    monkeypatch.setenv(ENV_VAR, str(path))
    llm = _llm()
    engine = llm.llm_engine
    assert engine.step_trace is not None
    prompts = [{"prompt_token_ids": [5 + i, *range(300, 300 + PROMPT_LEN - 1)]} for i in (0, 1)]
    params = SamplingParams(max_tokens=4, ignore_eos=True, temperature=0)
    llm.generate(prompts, params, use_tqdm=False)
    steps_before = engine.num_steps
    # The engine went idle: its lines are in the file already (a process killed while idle
    # loses none), though far fewer than a buffer's worth.
    assert len(_read(path)[1]) == steps_before < step_trace.FLUSH_EVERY_LINES
    llm.generate(prompts[:1], params, use_tqdm=False)  # the same prompt again: prefix-cached
    engine.shutdown()  # writes out what is buffered
    headers, steps = _read(path)

    assert len(headers) == 1 and headers[0]["block_size"] == BLOCK_SIZE
    assert len(steps) == engine.num_steps
    for step in steps:
        assert step.keys() >= STEP_FIELDS, STEP_FIELDS - step.keys()
        assert step["dur_ms"] >= step["execute_ms"] >= 0
        assert step["prefill"] + step["decode"] == step["seqs"]
        assert step["path"] == "eager" and step["graph_size"] is None  # CPU runs eagerly
    first, second = steps[0], steps[1]
    assert (first["seqs"], first["prefill"], first["admitted"]) == (2, 2, 2)
    assert first["tokens"] == 2 * PROMPT_LEN and first["cached_tokens"] == 0
    assert len(first["queue_ms"]) == 2 and len(first["ttft_ms"]) == 2
    assert (second["decode"], second["admitted"], second["tokens"]) == (2, 0, 2)
    assert second["context_tokens"] == 2 * PROMPT_LEN and not second["ttft_ms"]
    assert [s["running"] for s in steps[:steps_before]] == [2] * steps_before

    cached = steps[steps_before]
    whole_blocks = (PROMPT_LEN - 1) // BLOCK_SIZE * BLOCK_SIZE
    assert (cached["admitted"], cached["cached_tokens"]) == (1, whole_blocks)
    assert cached["tokens"] == PROMPT_LEN - whole_blocks
    assert cached["context_tokens"] == whole_blocks and cached["prefill"] == 1
    # After shutdown the trace is closed: further steps are not written.
    llm.generate(prompts[:1], params, use_tqdm=False)
    assert len(_read(path)[1]) == len(steps)


def test_disabled_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    llm = _llm()
    assert llm.llm_engine.step_trace is None
    assert llm.llm_engine.generation_step.phases is None
    llm.generate({"prompt_token_ids": [1, 2, 3]}, SamplingParams(max_tokens=2), use_tqdm=False)
    llm.llm_engine.shutdown()
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv(ENV_VAR, "  ")  # set but empty: off as well
    assert StepTrace.from_environment() is None


def test_writers_sharing_a_file_append_whole_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two engines (or processes) tracing into one file: lines reach it in whole batches, each
    batch by one write on an O_APPEND descriptor, so no line is torn or lost."""
    monkeypatch.setattr(step_trace, "FLUSH_EVERY_LINES", 3)
    path = tmp_path / "shared.jsonl"
    first, second = StepTrace(str(path), name="a"), StepTrace(str(path), name="b")
    for i in range(10):
        first.write({"step": i, "who": "a", "pad": "x" * 100})
        second.write({"step": i, "who": "b"})
    assert len(path.read_text().splitlines()) == 2 * 9  # three flushes each, a line pending
    first.close()
    second.close()
    second.close()  # idempotent
    second.write({"step": 99, "who": "b"})  # after close: dropped, not an error
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for who in "ab":
        assert [r["step"] for r in records if r.get("who") == who] == list(range(10))
    assert sum(r.get("event") == "start" for r in records) == 2
