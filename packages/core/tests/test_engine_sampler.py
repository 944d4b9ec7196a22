"""The sampler against simple per-row reference implementations on fixed logits."""

from __future__ import annotations

import math

import pytest
import torch

from mono_llm.core.engine.request import Sequence
from mono_llm.core.sampling_params import SamplingParams
from mono_llm.core.worker.sampler import (
    Sampler,
    apply_penalties,
    apply_token_bitmask,
    apply_top_k_top_p_min_p,
)

VOCAB = 50


def _logits(rows: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((rows, VOCAB), generator=generator) * 3


def _seq(
    params: SamplingParams, prompt: list[int] | None = None, output: list[int] | None = None
) -> Sequence:
    seq = Sequence("s", "r", 0, prompt or [1, 2, 3], sampling_params=params, max_tokens=100)
    for token in output or []:
        seq.append_token(token)
    return seq


# ---------------------------------------------------------------- references (one row at a time)
def ref_top_k(row: list[float], k: int) -> set[int]:
    if k <= 0:
        return set(range(len(row)))
    kth = sorted(row, reverse=True)[k - 1]
    return {i for i, v in enumerate(row) if v >= kth}


def ref_top_p(row: list[float], p: float) -> set[int]:
    exps = [math.exp(v) for v in row]
    total = sum(exps)
    order = sorted(range(len(row)), key=lambda i: -row[i])
    kept, mass = set(), 0.0
    for i in order:
        if mass >= p:
            break
        kept.add(i)
        mass += exps[i] / total
    return kept


def ref_min_p(row: list[float], min_p: float) -> set[int]:
    top = max(row)
    return {i for i, v in enumerate(row) if math.exp(v - top) >= min_p}


def _kept(logits: torch.Tensor) -> list[set[int]]:
    return [set(torch.nonzero(row > float("-inf")).flatten().tolist()) for row in logits]


# ---------------------------------------------------------------- filters
def test_top_k_top_p_min_p_match_reference() -> None:
    logits = _logits(6)
    top_k = torch.tensor([0, 1, 5, 17, 50, 3])
    top_p = torch.tensor([1.0, 0.5, 0.9, 0.3, 0.75, 0.99])
    min_p = torch.tensor([0.0, 0.1, 0.05, 0.0, 0.2, 0.01])
    rows = logits.tolist()
    only_k = _kept(apply_top_k_top_p_min_p(logits, top_k, None, None))
    assert only_k == [ref_top_k(r, int(k)) for r, k in zip(rows, top_k)]
    positive_k = torch.tensor([1, 2, 5, 17, 49, 3])
    fast = _kept(apply_top_k_top_p_min_p(logits, positive_k, None, None, max_top_k=49))
    assert fast == [ref_top_k(r, int(k)) for r, k in zip(rows, positive_k)]
    only_p = _kept(apply_top_k_top_p_min_p(logits, None, top_p, None))
    assert only_p == [ref_top_p(r, float(p)) for r, p in zip(rows, top_p)]
    only_min_p = _kept(apply_top_k_top_p_min_p(logits, None, None, min_p))
    assert only_min_p == [ref_min_p(r, float(m)) for r, m in zip(rows, min_p)]
    # Combined: min_p, then top_k, then top_p on what is left.
    combined = _kept(apply_top_k_top_p_min_p(logits, top_k, top_p, min_p))
    for row, k, p, m, kept in zip(rows, top_k, top_p, min_p, combined):
        allowed = ref_min_p(row, float(m))
        masked = [v if i in allowed else float("-inf") for i, v in enumerate(row)]
        allowed &= ref_top_k(masked, int(k))
        masked = [v if i in allowed else float("-inf") for i, v in enumerate(row)]
        assert kept == allowed & ref_top_p(masked, float(p))


def test_penalties_match_reference() -> None:
    logits = _logits(3, seed=1)
    prompts = [[1, 2, 2], [], [7]]
    outputs = [[2, 3, 3, 3], [4], []]
    presence = torch.tensor([0.5, -1.0, 2.0])
    frequency = torch.tensor([0.25, 0.0, 1.0])
    repetition = torch.tensor([1.3, 0.8, 2.0])
    got = apply_penalties(logits.clone(), prompts, outputs, presence, frequency, repetition)
    expected = logits.clone()
    for r in range(3):
        for token in range(VOCAB):
            value = expected[r, token].item()
            if token in prompts[r] or token in outputs[r]:
                rep = repetition[r].item()
                value = value / rep if value > 0 else value * rep
            count = outputs[r].count(token)
            value -= frequency[r].item() * count + presence[r].item() * (count > 0)
            expected[r, token] = value
    torch.testing.assert_close(got, expected)


# ---------------------------------------------------------------- the sampler
def test_greedy_and_logprobs_with_ranks() -> None:
    logits = _logits(2, seed=2)
    seqs = [_seq(SamplingParams(temperature=0, logprobs=3)), _seq(SamplingParams(temperature=0))]
    out = Sampler(VOCAB)(logits.clone(), seqs)
    assert out.sampled.tolist() == logits.argmax(-1).tolist()
    reference = torch.log_softmax(logits, -1)
    top = reference.topk(3, dim=-1)
    torch.testing.assert_close(out.top_logprobs, top.values)
    assert out.top_ids.tolist() == top.indices.tolist()
    assert out.sampled_rank.tolist() == [1, 1]
    torch.testing.assert_close(out.sampled_logprob, top.values[:, 0])


def test_random_samples_stay_in_the_reference_support() -> None:
    logits = _logits(1, seed=3)
    row = logits[0].tolist()
    params = SamplingParams(temperature=0.7, top_k=10, top_p=0.8, seed=0)
    allowed = ref_top_k(row, 10)
    masked = [v / 0.7 if i in allowed else float("-inf") for i, v in enumerate(row)]
    allowed &= ref_top_p(masked, 0.8)
    sampler = Sampler(VOCAB)
    seen = set()
    for seed in range(200):
        seq = _seq(params)
        seq.generator = sampler.make_generator(seed)
        seen.add(sampler(logits.clone(), [seq]).sampled.item())
    assert seen <= allowed
    assert len(seen) > 1  # it does sample, not argmax


def test_sampling_frequencies_follow_softmax() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0] + [-30.0] * (VOCAB - 3)])
    sampler = Sampler(VOCAB, seed=1)
    seqs = [_seq(SamplingParams(temperature=1.0)) for _ in range(4000)]
    counts = torch.bincount(sampler(logits.expand(4000, -1).clone(), seqs).sampled, minlength=3)
    expected = torch.softmax(logits[0, :3], -1) * 4000
    assert torch.allclose(counts[:3].float(), expected, rtol=0.1)


def test_seeded_sampling_independent_of_batch_composition() -> None:
    logits = _logits(4, seed=4)
    params = SamplingParams(temperature=1.0, seed=1234)

    def draws(batch: list[int], steps: int = 20) -> list[int]:
        sampler = Sampler(VOCAB, seed=len(batch))  # a different global stream each time
        seqs = [_seq(params if r == 0 else SamplingParams(temperature=1.0)) for r in batch]
        seqs[0].generator = sampler.make_generator(1234)
        # the other seeded requests in the batch must not disturb row 0's stream
        for s in seqs[1:]:
            s.generator = sampler.make_generator(99) if len(batch) > 2 else None
        return [sampler(logits[batch].clone(), seqs).sampled[0].item() for _ in range(steps)]

    alone = draws([0])
    assert draws([0, 1]) == alone
    assert draws([0, 2, 3, 1]) == alone
    assert len(set(alone)) > 1


def test_min_tokens_logit_bias_and_allowed_token_ids() -> None:
    logits = torch.zeros((3, VOCAB))
    logits[:, 5] = 10.0  # the "EOS"
    eos = {5}
    seqs = [
        _seq(SamplingParams(temperature=0, min_tokens=2, all_stop_token_ids=eos), output=[9]),
        _seq(SamplingParams(temperature=0, logit_bias={7: 20.0})),
        _seq(SamplingParams(temperature=0, allowed_token_ids=[11, 12])),
    ]
    logits[2, 12] = 1.0
    out = Sampler(VOCAB)(logits.clone(), seqs)
    assert out.sampled[0].item() != 5
    assert out.sampled[1].item() == 7
    assert out.sampled[2].item() == 12
    # min_tokens reached: EOS allowed again
    done = _seq(SamplingParams(temperature=0, min_tokens=1, all_stop_token_ids=eos), output=[9])
    assert Sampler(VOCAB)(logits[:1].clone(), [done]).sampled.item() == 5


class _OnlyTokens:
    """A grammar that allows a fixed token set (the structured-output hook's protocol)."""

    def __init__(self, tokens: list[int]) -> None:
        self.tokens = tokens
        self.accepted: list[int] = []

    def fill_next_token_bitmask(self, bitmask: torch.Tensor, index: int) -> None:
        bitmask[index] = 0
        for token in self.tokens:
            bitmask[index, token // 32] |= 1 << (token % 32)

    def accept_token(self, token_id: int) -> bool:
        self.accepted.append(token_id)
        return token_id in self.tokens

    def is_terminated(self) -> bool:
        return False


def test_grammar_bitmask_hook() -> None:
    logits = _logits(2, seed=5)
    seqs = [_seq(SamplingParams(temperature=1.0)), _seq(SamplingParams(temperature=0))]
    seqs[0].grammar = _OnlyTokens([3, 40])
    for _ in range(20):
        out = Sampler(VOCAB)(logits.clone(), seqs)
        assert out.sampled[0].item() in (3, 40)
        assert out.sampled[1].item() == logits[1].argmax().item()


@pytest.mark.parametrize("vocab", [31, 32, 70])
def test_apply_token_bitmask_layout(vocab: int) -> None:
    logits = torch.zeros((2, vocab))
    bitmask = torch.zeros((2, -(-vocab // 32)), dtype=torch.int32)
    bitmask[0, 0] = 0b101  # tokens 0 and 2
    bitmask[1] = -1
    apply_token_bitmask(logits, bitmask)
    assert set(torch.nonzero(logits[0] == 0).flatten().tolist()) == {0, 2}
    assert bool((logits[1] == 0).all())


def test_bad_words_ban_only_completions() -> None:
    logits = torch.zeros((2, VOCAB))
    logits[:, 8] = 5.0
    logits[:, 9] = 4.0
    single = _seq(SamplingParams(temperature=0))
    single.bad_words_token_ids = [[8]]
    after_prefix = _seq(SamplingParams(temperature=0), output=[6, 7])
    after_prefix.bad_words_token_ids = [[7, 8], [5, 8]]  # only [7, 8] is being completed
    out = Sampler(VOCAB)(logits.clone(), [single, after_prefix])
    assert out.sampled.tolist() == [9, 9]
    other_prefix = _seq(SamplingParams(temperature=0), output=[6, 5, 4])
    other_prefix.bad_words_token_ids = [[7, 8]]
    assert Sampler(VOCAB)(logits[:1].clone(), [other_prefix]).sampled.item() == 8
