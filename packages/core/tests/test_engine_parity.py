"""Greedy parity of the whole engine (scheduler, KV cache, runner, sampler) with HF generate.

Same weights, float32, CPU. Each fixture runs a batch of prompts of different lengths for
32+ new tokens, plainly, with chunked prefill forced by a tiny token budget, with preemption
forced by a tiny KV cache, and with prefix-cache hits on a shared system prompt.
"""

from __future__ import annotations

import functools
import random

import pytest
import torch

from mono_llm.core import LLM, SamplingParams
from mono_llm.core.testing import DECODER_FIXTURES, fixture_path

FIXTURES = DECODER_FIXTURES
NEW_TOKENS = 32
LOGPROB_ATOL = 1e-3


def _prompts(seed: int = 0, lengths: tuple[int, ...] = (5, 17, 33, 46)) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(10, 1200) for _ in range(n)] for n in lengths]


@functools.cache
def _hf_model(name: str) -> torch.nn.Module:
    import transformers

    # Eager attention is the exact reference: some transformers releases run Gemma 2 through
    # SDPA by default, which skips its attention soft-capping.
    return transformers.AutoModelForCausalLM.from_pretrained(
        fixture_path(name), dtype=torch.float32, attn_implementation="eager"
    ).eval()


@functools.cache
def _hf_greedy(name: str, prompt: tuple[int, ...]) -> tuple[list[int], list[float]]:
    """HF generate(do_sample=False) tokens and the raw log_softmax of each chosen token."""
    import transformers

    model = _hf_model(name)
    # Replace (not merge with) the checkpoint's generation config: no EOS, as ignore_eos.
    model.generation_config = transformers.GenerationConfig(
        do_sample=False, max_new_tokens=NEW_TOKENS, pad_token_id=0
    )
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]), output_logits=True, return_dict_in_generate=True
        )
    tokens = out.sequences[0, len(prompt) :].tolist()
    # The engine samples (and scores) only ids its tokenizer can decode: OPT's embedding has
    # rows past the tokenizer (as the tiny-opt fixtures do), which HF's softmax includes.
    decodable = len(transformers.AutoTokenizer.from_pretrained(fixture_path(name)))
    logprobs = [
        torch.log_softmax(step_logits[0, :decodable].float(), -1)[token].item()
        for step_logits, token in zip(out.logits, tokens, strict=True)
    ]
    return tokens, logprobs


def _llm(name: str, **kwargs) -> LLM:
    kwargs.setdefault("num_gpu_blocks_override", 64)
    return LLM(str(fixture_path(name)), max_model_len=256, seed=0, **kwargs)


def _check(name: str, llm: LLM, prompts: list[list[int]]) -> None:
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=1)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    for prompt, out in zip(prompts, outputs, strict=True):
        hf_tokens, hf_logprobs = _hf_greedy(name, tuple(prompt))
        completion = out.outputs[0]
        assert completion.token_ids == hf_tokens, f"{name}: prompt of {len(prompt)} tokens"
        assert completion.finish_reason == "length"
        ours = [entry[token].logprob for entry, token in zip(completion.logprobs, hf_tokens)]
        assert ours == pytest.approx(hf_logprobs, abs=LOGPROB_ATOL)
        assert all(entry[token].rank == 1 for entry, token in zip(completion.logprobs, hf_tokens))


@pytest.mark.parametrize("name", FIXTURES)
def test_engine_greedy_parity(name: str) -> None:
    llm = _llm(name)
    _check(name, llm, _prompts())
    assert llm.llm_engine.kv_cache.num_free_blocks == 64


@pytest.mark.parametrize("name", FIXTURES)
def test_engine_greedy_parity_chunked_prefill(name: str) -> None:
    llm = _llm(name, max_num_batched_tokens=16, max_num_seqs=4)
    engine = llm.llm_engine
    steps_before = engine.num_steps
    _check(name, llm, _prompts())
    # 101 prompt tokens at most 16 per step: prefill alone needs 7+ steps, mixed with decodes.
    assert engine.num_steps - steps_before >= NEW_TOKENS + 6


@pytest.mark.parametrize("name", FIXTURES)
def test_engine_greedy_parity_preemption(name: str) -> None:
    # The longest sequence (46 + 32 tokens) needs 5 blocks of 16; all four together need 17.
    llm = _llm(name, num_gpu_blocks_override=7)
    _check(name, llm, _prompts())
    stats = llm.llm_engine.get_stats()
    assert stats.num_preemptions > 0
    assert llm.llm_engine.kv_cache.num_free_blocks == 7


@pytest.mark.parametrize("name", FIXTURES)
def test_engine_greedy_parity_prefix_cache(name: str) -> None:
    llm = _llm(name)
    system = _prompts(seed=1, lengths=(40,))[0]
    prompts = [system + suffix for suffix in _prompts(seed=2, lengths=(3, 9, 20))]
    _check(name, llm, prompts[:1])  # computes (and caches) the shared prefix
    hits_before = llm.llm_engine.get_stats().prefix_cache_hits
    _check(name, llm, prompts)
    stats = llm.llm_engine.get_stats()
    # Two full blocks of the 40-token system prompt, for each of the three prompts.
    assert stats.prefix_cache_hits - hits_before >= 3 * 32
