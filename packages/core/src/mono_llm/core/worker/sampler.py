"""Turning one step's logits into next tokens: logits processors, then greedy or random draws.

Everything is batched over rows with per-row parameter tensors; Python only loops over
requests to gather their parameters (never over vocabulary entries). Order, as in vLLM v1:
grammar bitmask, allowed_token_ids, logit_bias, min_tokens, penalties, then greedy argmax, or
temperature, min_p, top_k, top_p and an exponential race draw.

Logprobs are "raw": log_softmax of the model's logits before any processing (vLLM v1's
default), so they can be compared with the model's own distribution.

Seeded requests draw their noise from their own `torch.Generator`, one vocabulary-wide draw
per step, so their samples depend only on their seed and their own logits, never on which
other requests share the batch.
"""

from __future__ import annotations

from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from mono_llm.core.engine.request import Sequence

# Grammar bitmasks go through the kernel package's op (Triton on CUDA, torch reference on CPU);
# re-exported here as the sampler's name for it.
from mono_llm.kernels import apply_token_bitmask

_NEG_INF = float("-inf")


class StructuredOutputGrammar(Protocol):
    """What a structured-output matcher provides to the sampler (xgrammar's shape)."""

    def fill_next_token_bitmask(self, bitmask: torch.Tensor, index: int) -> None:
        """Write row `index` of the int32 bitmask [batch, ceil(vocab/32)] (1 bit = allowed)."""

    def accept_token(self, token_id: int) -> bool:
        """Advance the matcher; False if the token is not allowed."""

    def is_terminated(self) -> bool:
        """True once the grammar is complete (generation should stop)."""


@dataclass(slots=True)
class SamplerOutput:
    sampled: torch.Tensor  # [rows] int64
    # Only when some row asked for logprobs (or best_of needs cumulative logprobs):
    sampled_logprob: torch.Tensor | None = None  # [rows]
    sampled_rank: torch.Tensor | None = None  # [rows] int64, 1 = most likely
    top_ids: torch.Tensor | None = None  # [rows, max_logprobs] int64
    top_logprobs: torch.Tensor | None = None  # [rows, max_logprobs]


def compute_logprobs(
    logits: torch.Tensor, token_ids: torch.Tensor, num_top: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logprob of token_ids, their ranks, top-`num_top` ids, top-`num_top` logprobs)."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # [rows, vocab]
    chosen = logprobs.gather(1, token_ids.unsqueeze(1))  # [rows, 1]
    ranks = (logprobs > chosen).sum(dim=-1) + 1
    num_top = min(num_top, logprobs.shape[-1])
    top_logprobs, top_ids = logprobs.topk(num_top, dim=-1) if num_top else (None, None)
    if num_top == 0:
        top_ids = torch.empty((logits.shape[0], 0), dtype=torch.long, device=logits.device)
        top_logprobs = torch.empty((logits.shape[0], 0), device=logits.device)
    return chosen.squeeze(1), ranks, top_ids, top_logprobs


def _pad(rows: list[list[int]], fill: int, device: torch.device) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    return torch.tensor(
        [r + [fill] * (width - len(r)) for r in rows], dtype=torch.long, device=device
    )


def apply_penalties(
    logits: torch.Tensor,
    prompt_ids: list[list[int]],
    output_ids: list[list[int]],
    presence: torch.Tensor,
    frequency: torch.Tensor,
    repetition: torch.Tensor,
) -> torch.Tensor:
    """OpenAI presence/frequency penalties (generated tokens) and the CTRL repetition penalty
    (prompt and generated tokens: positive logits divided, negative multiplied)."""
    rows, vocab = logits.shape
    device = logits.device
    counts = torch.zeros((rows, vocab + 1), dtype=logits.dtype, device=device)
    if any(output_ids):
        out = _pad(output_ids, vocab, device)
        counts.scatter_add_(1, out, torch.ones_like(out, dtype=logits.dtype))
    counts = counts[:, :vocab]
    seen = counts > 0
    if any(prompt_ids):
        in_prompt = torch.zeros((rows, vocab + 1), dtype=torch.bool, device=device)
        in_prompt.scatter_(1, _pad(prompt_ids, vocab, device), True)
        seen_any = seen | in_prompt[:, :vocab]
    else:
        seen_any = seen
    rep = repetition.unsqueeze(1)
    penalised = torch.where(logits > 0, logits / rep, logits * rep)
    logits = torch.where(seen_any & (rep != 1.0), penalised, logits)
    logits = (
        logits - frequency.unsqueeze(1) * counts - presence.unsqueeze(1) * seen.to(logits.dtype)
    )
    return logits


def apply_top_k_top_p_min_p(
    logits: torch.Tensor,
    top_k: torch.Tensor | None,
    top_p: torch.Tensor | None,
    min_p: torch.Tensor | None,
    max_top_k: int | None = None,
) -> torch.Tensor:
    """Mask to -inf whatever min_p, then top_k (ties at the k-th value kept), then top_p
    (smallest set whose mass reaches p, at least one token) exclude; per-row parameters.
    `max_top_k`: the largest k of any row, known on the host (0 if some row has no top-k)."""
    if min_p is not None:
        probs = logits.softmax(dim=-1)
        threshold = probs.amax(dim=-1, keepdim=True) * min_p.unsqueeze(1)
        logits = logits.masked_fill(probs < threshold, _NEG_INF)
    if top_k is None and top_p is None:
        return logits
    vocab = logits.shape[-1]
    if top_p is None and max_top_k is not None and 0 < max_top_k < vocab:
        # top-k alone: a partial top-k instead of a full vocabulary sort (cheaper on big vocabs).
        k = top_k.clamp(min=1, max=max_top_k)
        kth = logits.topk(max_top_k, dim=-1).values.gather(1, (k - 1).unsqueeze(1))
        return logits.masked_fill(logits < kth, _NEG_INF)
    ascending, order = logits.sort(dim=-1)
    if top_k is not None:
        k = torch.where(top_k <= 0, vocab, top_k.clamp(max=vocab))
        kth = ascending.gather(1, (vocab - k).unsqueeze(1))
        ascending = ascending.masked_fill(ascending < kth, _NEG_INF)
    if top_p is not None:
        mass_below = ascending.softmax(dim=-1).cumsum(dim=-1)
        drop = mass_below <= (1.0 - top_p).unsqueeze(1)
        drop[:, -1] = False
        ascending = ascending.masked_fill(drop, _NEG_INF)
    return torch.empty_like(logits).scatter_(1, order, ascending)


class Sampler:
    """Samples one token per row; rows are sequences whose slice reached their end."""

    def __init__(self, vocab_size: int, seed: int = 0, device: torch.device | str = "cpu") -> None:
        self.vocab_size = vocab_size
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def make_generator(self, seed: int) -> torch.Generator:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed)
        return generator

    def __call__(self, logits: torch.Tensor, seqs: SequenceABC[Sequence]) -> SamplerOutput:
        """logits: [len(seqs), vocab] float32 (modified in place)."""
        params = [seq.sampling_params for seq in seqs]
        assert all(p is not None for p in params)
        device = logits.device
        vocab = logits.shape[-1]
        raw = logits.clone() if any(p.needs_logprobs for p in params) else None

        self._apply_masks(logits, seqs)
        if any(
            p.presence_penalty or p.frequency_penalty or p.repetition_penalty != 1.0 for p in params
        ):
            logits = apply_penalties(
                logits,
                [
                    seq.prompt_token_ids if p.repetition_penalty != 1.0 else []
                    for seq, p in zip(seqs, params)
                ],
                [seq.output_token_ids for seq in seqs],
                torch.tensor([p.presence_penalty for p in params], device=device),
                torch.tensor([p.frequency_penalty for p in params], device=device),
                torch.tensor([p.repetition_penalty for p in params], device=device),
            )

        greedy_rows = [p.is_greedy for p in params]
        sampled = logits.argmax(dim=-1)
        if not all(greedy_rows):
            temperature = torch.tensor(
                [1.0 if p.is_greedy else p.temperature for p in params],
                dtype=logits.dtype,
                device=device,
            )
            logits = logits / temperature.unsqueeze(1)
            top_ks = [p.top_k for p in params if not p.is_greedy]
            logits = apply_top_k_top_p_min_p(
                logits,
                _param_tensor(params, "top_k", 0, torch.long, device),
                _param_tensor(params, "top_p", 1.0, logits.dtype, device),
                _param_tensor(params, "min_p", 0.0, logits.dtype, device),
                max_top_k=0 if 0 in top_ks else max(top_ks),
            )
            probs = logits.softmax(dim=-1)
            noise = torch.empty_like(probs).exponential_(generator=self.generator)
            for row, seq in enumerate(seqs):
                if seq.generator is not None and not greedy_rows[row]:
                    noise[row].exponential_(generator=seq.generator)
            drawn = (probs / noise).argmax(dim=-1)
            is_greedy = torch.tensor(greedy_rows, device=device)
            sampled = torch.where(is_greedy, sampled, drawn)

        out = SamplerOutput(sampled=sampled)
        if raw is not None:
            num_top = max(num_top_logprobs(p.logprobs, vocab) for p in params)
            out.sampled_logprob, out.sampled_rank, out.top_ids, out.top_logprobs = compute_logprobs(
                raw, sampled, num_top
            )
        return out

    def _apply_masks(self, logits: torch.Tensor, seqs: SequenceABC[Sequence]) -> None:
        """Grammar bitmask, allowed_token_ids, logit_bias and min_tokens, in place."""
        device = logits.device
        vocab = logits.shape[-1]
        grammar_rows = [row for row, seq in enumerate(seqs) if seq.grammar is not None]
        if grammar_rows:
            bitmask = torch.full((len(seqs), -(-vocab // 32)), -1, dtype=torch.int32)
            for row in grammar_rows:
                seqs[row].grammar.fill_next_token_bitmask(bitmask, row)
            apply_token_bitmask(
                logits,
                bitmask.to(device),
                torch.tensor(grammar_rows, dtype=torch.long, device=device),
            )
        mask_rows: list[int] = []
        mask_cols: list[int] = []
        bias_rows: list[int] = []
        bias_cols: list[int] = []
        bias_values: list[float] = []
        allowed_rows: list[int] = []
        allowed_cols: list[int] = []
        for row, seq in enumerate(seqs):
            p = seq.sampling_params
            if p.allowed_token_ids:
                allowed_rows.extend([row] * len(p.allowed_token_ids))
                allowed_cols.extend(p.allowed_token_ids)
            if p.logit_bias:
                bias_rows.extend([row] * len(p.logit_bias))
                bias_cols.extend(int(t) for t in p.logit_bias)
                bias_values.extend(float(v) for v in p.logit_bias.values())
            for word in seq.bad_words_token_ids:
                # Ban a bad word's last token only where the tokens before it were just generated.
                prefix_len = len(word) - 1
                if prefix_len == 0 or (
                    seq.num_output_tokens >= prefix_len and seq.token_ids[-prefix_len:] == word[:-1]
                ):
                    mask_rows.append(row)
                    mask_cols.append(word[-1])
            if seq.num_output_tokens < p.min_tokens and p.all_stop_token_ids:
                stops = [t for t in p.all_stop_token_ids if t < vocab]
                mask_rows.extend([row] * len(stops))
                mask_cols.extend(stops)
        if allowed_rows:
            keep = torch.zeros_like(logits, dtype=torch.bool)
            rows_with = torch.zeros(logits.shape[0], dtype=torch.bool, device=device)
            rows_t = torch.tensor(allowed_rows, device=device)
            keep[rows_t, torch.tensor(allowed_cols, device=device)] = True
            rows_with[rows_t] = True
            logits.masked_fill_(rows_with.unsqueeze(1) & ~keep, _NEG_INF)
        if bias_rows:
            logits.index_put_(
                (torch.tensor(bias_rows, device=device), torch.tensor(bias_cols, device=device)),
                torch.tensor(bias_values, dtype=logits.dtype, device=device),
                accumulate=True,
            )
        if mask_rows:
            logits[
                torch.tensor(mask_rows, device=device), torch.tensor(mask_cols, device=device)
            ] = _NEG_INF


def num_top_logprobs(requested: int | None, vocab: int) -> int:
    """How many top alternatives a `logprobs` / `prompt_logprobs` value asks for (-1: the
    whole vocabulary, as vLLM; None: none)."""
    if requested is None:
        return 0
    return vocab if requested == -1 else requested


def _param_tensor(
    params: list[Any], name: str, neutral: float, dtype: torch.dtype, device: torch.device
) -> torch.Tensor | None:
    values = [neutral if p.is_greedy else getattr(p, name) for p in params]
    if all(v == neutral for v in values):
        return None
    return torch.tensor(values, dtype=dtype, device=device)
