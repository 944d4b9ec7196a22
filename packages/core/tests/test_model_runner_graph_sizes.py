"""Which CUDA graph sizes the runner captures (pure arithmetic: runs on the CPU)."""

from __future__ import annotations

from mono_llm.core.worker.model_runner import decode_graph_sizes, prefill_graph_sizes


def test_decode_graph_sizes_end_at_max_num_seqs() -> None:
    assert decode_graph_sizes(8) == [1, 2, 4, 8]
    assert decode_graph_sizes(12) == [1, 2, 4, 8, 12]


def test_prefill_graph_sizes_are_capped_by_limit_budget_and_context() -> None:
    assert prefill_graph_sizes(512, 8192, 8192) == [16, 32, 64, 128, 256, 512]
    assert prefill_graph_sizes(512, 8192, 256) == [16, 32, 64, 128, 256]
    assert prefill_graph_sizes(300, 100, 8192) == [16, 32, 64]
    assert prefill_graph_sizes(0, 8192, 8192) == []
    assert prefill_graph_sizes(8, 8192, 8192) == []
