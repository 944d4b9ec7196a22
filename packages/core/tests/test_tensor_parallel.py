"""Tensor parallelism on CPU: two gloo ranks (rank 0 here, rank 1 a spawned worker) give the
same greedy tokens and logprobs as one device, and sizes the model cannot take are refused
before any worker starts."""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import pytest

from mono_llm.core import LLM, EngineArgs, SamplingParams
from mono_llm.core.errors import ParallelConfigError
from mono_llm.core.layers.parallel import attention_head_split
from mono_llm.core.testing import fixture_path
from mono_llm.core.testing.variants import derive_model

PROMPTS = [
    "hello there",
    "the quick brown fox jumps over",
    {"prompt_token_ids": [0, 300, 301, 302, 303, 304, 305, 306, 307, 308, 309, 310, 311, 312, 313,
                          314, 315, 316, 317, 318]},
]  # fmt: skip
PARAMS = SamplingParams(
    temperature=0, max_tokens=24, ignore_eos=True, logprobs=5, prompt_logprobs=3
)


def _llm(model: str | Path, tp: int) -> LLM:
    return LLM(
        str(model),
        max_model_len=128,
        num_gpu_blocks_override=64,
        max_num_batched_tokens=32,  # several chunked-prefill steps, mixed with decodes
        tensor_parallel_size=tp,
    )


@functools.cache
def _reference(model: str) -> list:
    return _llm(fixture_path(model), 1).generate(PROMPTS, PARAMS)


def _assert_same(expected: list, got: list) -> None:
    for ref, out in zip(expected, got, strict=True):
        a, b = ref.outputs[0], out.outputs[0]
        assert b.token_ids == a.token_ids
        assert b.text == a.text
        for step_a, step_b in zip(a.logprobs, b.logprobs, strict=True):
            assert list(step_b) == list(step_a)  # same top tokens, same order
            for token, lp in step_a.items():
                assert step_b[token].logprob == pytest.approx(lp.logprob, abs=1e-4)
        for step_a, step_b in zip(ref.prompt_logprobs[1:], out.prompt_logprobs[1:], strict=True):
            for token, lp in step_a.items():
                assert step_b[token].logprob == pytest.approx(lp.logprob, abs=1e-4)


def test_tp2_equals_tp1_offline() -> None:
    """tiny-qwen2: q/k/v bias (column-parallel bias slices), two kv heads split one per rank,
    an untied lm_head gathered over the vocabulary."""
    llm = _llm(fixture_path("tiny-qwen2"), 2)
    assert llm.llm_engine.model_runner.tensor_parallel_size == 2
    _assert_same(_reference("tiny-qwen2"), llm.generate(PROMPTS, PARAMS))
    # The engine keeps serving after a batch (the worker loop is still in step with rank 0).
    again = llm.generate(PROMPTS[:1], SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))
    assert again[0].outputs[0].token_ids == _reference("tiny-qwen2")[0].outputs[0].token_ids[:5]


@pytest.mark.slow
def test_tp2_tied_embeddings_and_tp4_replicated_kv_heads(tmp_path: Path) -> None:
    """A tied lm_head shares the embedding's vocabulary slice; with 4 ranks and 2 kv heads
    each kv head is replicated on the two ranks whose query heads read it."""

    def tie(state: dict) -> dict:
        return {k: v for k, v in state.items() if k != "lm_head.weight"}

    tied = derive_model(
        "tiny-qwen2",
        tmp_path / "tied",
        config=lambda c: c.update(tie_word_embeddings=True),
        weights=tie,
    )
    expected = _llm(tied, 1).generate(PROMPTS, PARAMS)
    _assert_same(expected, _llm(tied, 2).generate(PROMPTS, PARAMS))
    # tiny-mistral: 4 query heads, 2 kv heads, a vocabulary of 1268 (divisible by 4).
    tp4 = _llm(fixture_path("tiny-mistral"), 4).generate(PROMPTS, PARAMS)
    _assert_same(_reference("tiny-mistral"), tp4)


@pytest.mark.parametrize("name", ["tiny-gemma", "tiny-gemma2", "tiny-gemma3"])
def test_tp2_gemma_equals_tp1(tmp_path: Path, name: str) -> None:
    """Gemma through the Llama family's split: scaled embeddings after the vocabulary
    all-reduce, a GeGLU over each rank's gate/up slice, the tied head; Gemma 2's soft caps and
    window on each rank's heads; Gemma 3's q/k head norms and per-layer rotary tables. The
    vocabulary is padded by one row (as released checkpoints pad theirs) so that two ranks
    divide it."""
    import torch

    def pad_vocab(state: dict) -> None:
        embed = state["model.embed_tokens.weight"]
        state["model.embed_tokens.weight"] = torch.cat([embed, embed[:1]])

    gemma = derive_model(
        name,
        tmp_path / "gemma",
        config=lambda c: c.update(vocab_size=c["vocab_size"] + 1),
        weights=pad_vocab,
    )
    split = _llm(gemma, 2)
    assert split.llm_engine.model_runner.tensor_parallel_size == 2
    _assert_same(_llm(gemma, 1).generate(PROMPTS, PARAMS), split.generate(PROMPTS, PARAMS))


def test_head_split_replicates_kv_heads_below_the_group_size() -> None:
    def split(heads: int, kv: int, rank: int, size: int) -> tuple[int, int, int, int]:
        s = attention_head_split(heads, kv, SimpleNamespace(rank=rank, size=size))
        return s.heads, s.kv_heads, s.first_head, s.first_kv_head

    assert split(32, 8, 1, 2) == (16, 4, 16, 4)
    # 8 query heads, 2 kv heads, 4 ranks: ranks 0-1 read kv head 0, ranks 2-3 kv head 1.
    assert [split(8, 2, r, 4) for r in range(4)] == [
        (2, 1, 0, 0),
        (2, 1, 2, 0),
        (2, 1, 4, 1),
        (2, 1, 6, 1),
    ]
    with pytest.raises(ValueError, match="num_key_value_heads"):
        split(12, 3, 0, 2)


@pytest.mark.parametrize(
    ("model", "kwargs", "match"),
    [
        ("tiny-llama", {"tensor_parallel_size": 2}, "vocab_size \\(1267\\)"),
        ("tiny-qwen2", {"tensor_parallel_size": 3}, "num_attention_heads \\(4\\)"),
        ("tiny-qwen2", {"tensor_parallel_size": 2, "device": "cuda"}, "needs 2 GPUs"),
        ("tiny-qwen2", {"tensor_parallel_size": 0}, "tensor_parallel_size must be at least 1"),
        ("tiny-qwen2", {"distributed_executor_backend": "mpi"}, "mp or ray"),
        ("tiny-bert", {"tensor_parallel_size": 2}, "tensor parallelism runs text generation"),
    ],
)
def test_sizes_the_model_or_machine_cannot_take(model: str, kwargs: dict, match: str) -> None:
    if kwargs.get("device") == "cuda":
        import torch

        if torch.cuda.device_count() >= 2:
            pytest.skip("this machine has two GPUs")
    with pytest.raises(ParallelConfigError, match=match) as info:
        EngineArgs(model=str(fixture_path(model)), **kwargs).create_engine_config()
    assert isinstance(info.value, ValueError)
    if "tensor_parallel_size" in kwargs and kwargs["tensor_parallel_size"] > 1:
        assert "--tensor-parallel-size" in str(info.value)


def test_tp2_with_ray_workers_equals_tp1() -> None:
    """--distributed-executor-backend ray: rank 1 is a Ray actor in a placement group (one
    bundle per worker) running the same worker loop as a local process."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        llm = LLM(
            str(fixture_path("tiny-qwen2")),
            max_model_len=128,
            num_gpu_blocks_override=64,
            max_num_batched_tokens=32,
            tensor_parallel_size=2,
            distributed_executor_backend="ray",
        )
        launcher = llm.llm_engine.model_runner._launcher
        assert len(launcher.actors) == 1
        assert launcher.placement_group.bundle_count == 1
        _assert_same(_reference("tiny-qwen2"), llm.generate(PROMPTS, PARAMS))
        llm.llm_engine.shutdown()
        assert launcher.actors == []
    finally:
        ray.shutdown()


def test_dummy_weights_are_the_single_device_weights_sliced() -> None:
    """load_format=dummy under TP=2 draws each tensor whole and keeps the rank's slice, so
    TP=1 and TP=2 benchmarks run the same model (same greedy tokens)."""
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    prompts = PROMPTS[:2]
    kwargs = {"max_model_len": 128, "num_gpu_blocks_override": 32, "load_format": "dummy"}
    one = LLM(str(fixture_path("tiny-mistral")), **kwargs).generate(prompts, params)
    two = LLM(str(fixture_path("tiny-mistral")), tensor_parallel_size=2, **kwargs).generate(
        prompts, params
    )
    assert [o.outputs[0].token_ids for o in two] == [o.outputs[0].token_ids for o in one]
