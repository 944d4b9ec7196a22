"""Greedy outputs must not depend on how the engine schedules them.

Many requests with shared prefixes, chunked prefill, a KV cache small enough to preempt
repeatedly, prefix-cache hits and evictions, all at once: every request's tokens and
logprobs must equal those of a roomy engine that runs each prompt without any of that.
"""

from __future__ import annotations

import random

import pytest

from mono_llm.core import LLM, SamplingParams
from mono_llm.core.testing import fixture_path


def _workload(seed: int) -> list[dict[str, list[int]]]:
    rng = random.Random(seed)
    shared = [[rng.randrange(10, 1200) for _ in range(n)] for n in (20, 37)]
    prompts = []
    for _ in range(14):
        prefix = rng.choice([*shared, []])
        tail = [rng.randrange(10, 1200) for _ in range(rng.randrange(1, 30))]
        prompts.append({"prompt_token_ids": prefix + tail})
    return prompts


@pytest.mark.parametrize("seed", [0, 1])
def test_outputs_independent_of_scheduling(seed: int) -> None:
    model = str(fixture_path("tiny-llama"))
    prompts = _workload(seed)
    base = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=0)
    # Every third request also wants prompt logprobs (computed chunk by chunk, and again after
    # a preemption, without the prefix cache).
    params = [base.clone(prompt_logprobs=1) if i % 3 == 0 else base for i in range(len(prompts))]
    roomy = LLM(model, max_model_len=128, num_gpu_blocks_override=256, enable_prefix_caching=False)
    expected = roomy.generate(prompts, params, use_tqdm=False)

    tight = LLM(
        model,
        max_model_len=128,
        block_size=8,
        num_gpu_blocks_override=24,  # 192 tokens for 14 sequences of up to ~90
        max_num_batched_tokens=24,
        max_num_seqs=6,
    )
    got = tight.generate(prompts, params, use_tqdm=False)
    stats = tight.llm_engine.get_stats()
    assert stats.num_preemptions > 0 and stats.prefix_cache_hits > 0
    for want, have in zip(expected, got, strict=True):
        assert have.outputs[0].token_ids == want.outputs[0].token_ids
        lp_have = [next(iter(d.values())).logprob for d in have.outputs[0].logprobs]
        lp_want = [next(iter(d.values())).logprob for d in want.outputs[0].logprobs]
        assert lp_have == pytest.approx(lp_want, abs=1e-4)
        assert (have.prompt_logprobs is None) == (want.prompt_logprobs is None)
        if want.prompt_logprobs is not None:
            assert len(have.prompt_logprobs) == len(want.prompt_logprobs)
            for a, b in zip(have.prompt_logprobs[1:], want.prompt_logprobs[1:], strict=True):
                assert a.keys() == b.keys()
                assert [x.logprob for x in a.values()] == pytest.approx(
                    [x.logprob for x in b.values()], abs=1e-4
                )
    assert tight.llm_engine.kv_cache.num_free_blocks == 24
