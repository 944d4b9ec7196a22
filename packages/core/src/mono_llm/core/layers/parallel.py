"""Tensor-parallel layers: each rank holds a slice of a weight and the group combines results.

The split follows Megatron-LM: a column-parallel linear keeps a slice of the output features
(the fused qkv and gate_up projections, each checkpoint shard sliced separately, so every rank
gets its own q heads, k/v heads, gate and up rows), and the row-parallel linear after it keeps
the matching slice of the input features and sums the partial products with one all-reduce.
An attention block and an MLP block therefore cost one all-reduce each. The embedding and the
lm_head are split along the vocabulary: each rank looks up or scores its own token range,
and an all-reduce (embedding) or all-gather (logits) puts the whole back together.

With a group of one rank every layer here is the plain layer: same shapes, no collective.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mono_llm.core.distributed.group import TensorParallelGroup


def divide(total: int, parts: int, what: str) -> int:
    """total / parts, which must be exact."""
    if total % parts:
        raise ValueError(f"{what} ({total}) is not divisible by the tensor-parallel size {parts}")
    return total // parts


@dataclass(frozen=True, slots=True)
class HeadSplit:
    """The attention heads one rank computes."""

    heads: int
    kv_heads: int
    first_head: int
    first_kv_head: int


def attention_head_split(num_heads: int, num_kv_heads: int, tp: TensorParallelGroup) -> HeadSplit:
    """Query heads are split evenly. Key/value heads are split evenly when there are at least
    as many as ranks; with fewer (grouped-query attention on many devices) each rank keeps the
    one kv head its query heads read, so kv heads are replicated, never split below one."""
    heads = divide(num_heads, tp.size, "num_attention_heads")
    if num_kv_heads >= tp.size:
        kv_heads = divide(num_kv_heads, tp.size, "num_key_value_heads")
        first_kv = tp.rank * kv_heads
    else:
        divide(tp.size, num_kv_heads, "the tensor-parallel size replicating num_key_value_heads")
        kv_heads = 1
        first_kv = tp.rank * num_kv_heads // tp.size
    return HeadSplit(heads, kv_heads, tp.rank * heads, first_kv)


def _check_rows(name: str, loaded: torch.Tensor, start: int, size: int, dim: int) -> None:
    if loaded.shape[dim] < start + size:
        raise ValueError(
            f"{name}: checkpoint tensor of shape {tuple(loaded.shape)} has no rows "
            f"[{start}, {start + size}) along dim {dim}"
        )


class RowParallelLinear(nn.Linear):
    """y = x W^T + b with W's input features split over the ranks; `x` is this rank's slice
    ([tokens, in_features / size]), the output is whole on every rank after the all-reduce."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool, tp: TensorParallelGroup
    ) -> None:
        self.input_slice = divide(in_features, tp.size, "input features")
        super().__init__(self.input_slice, out_features, bias=bias)
        self._tp = (tp,)  # a tuple keeps the group out of nn.Module attribute handling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tp = self._tp[0]
        if tp.size == 1:
            return super().forward(x)
        out = F.linear(x, self.weight)
        tp.all_reduce(out)
        # The bias is added once, after the sum (each rank adding it would count it N times).
        return out if self.bias is None else out + self.bias

    def load_checkpoint(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        """Copy this rank's columns of the checkpoint weight (the bias is not split)."""
        if param is self.weight:
            start = self._tp[0].rank * self.input_slice
            _check_rows("row-parallel weight", loaded, start, self.input_slice, 1)
            loaded = loaded.narrow(1, start, self.input_slice)
        _copy(param, loaded)


class VocabParallelEmbedding(nn.Embedding):
    """Token embedding whose rows (the vocabulary) are split evenly over the ranks."""

    def __init__(self, vocab_size: int, hidden_size: int, tp: TensorParallelGroup) -> None:
        self.vocab_slice = divide(vocab_size, tp.size, "vocab_size")
        super().__init__(self.vocab_slice, hidden_size)
        self.vocab_start = tp.rank * self.vocab_slice
        self._tp = (tp,)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        tp = self._tp[0]
        if tp.size == 1:
            return super().forward(input_ids)
        local = input_ids - self.vocab_start
        outside = (local < 0) | (local >= self.vocab_slice)
        # Ids of other ranks look up row 0 and are zeroed; the all-reduce adds the owner's row.
        hidden = F.embedding(local.masked_fill(outside, 0), self.weight)
        hidden.masked_fill_(outside.unsqueeze(-1), 0)
        return tp.all_reduce(hidden)

    def load_checkpoint(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        _check_rows("embedding", loaded, self.vocab_start, self.vocab_slice, 0)
        _copy(param, loaded.narrow(0, self.vocab_start, self.vocab_slice))


class ParallelLMHead(nn.Linear):
    """The vocabulary projection, rows split as `VocabParallelEmbedding` splits them (so a tied
    head shares the embedding's slice); `forward` returns the whole logits on every rank."""

    def __init__(self, hidden_size: int, vocab_size: int, tp: TensorParallelGroup) -> None:
        self.vocab_slice = divide(vocab_size, tp.size, "vocab_size")
        super().__init__(hidden_size, self.vocab_slice, bias=False)
        self.vocab_start = tp.rank * self.vocab_slice
        self._tp = (tp,)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # [rows, vocab / size] on each rank -> [rows, vocab] on every rank. An all-gather
        # rather than a gather to rank 0: the same collective on every rank keeps CUDA graphs
        # identical across ranks, and the bytes moved are the same.
        return self._tp[0].all_gather(super().forward(hidden), dim=-1)

    def load_checkpoint(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        _check_rows("lm_head", loaded, self.vocab_start, self.vocab_slice, 0)
        _copy(param, loaded.narrow(0, self.vocab_start, self.vocab_slice))


def _copy(param: nn.Parameter, loaded: torch.Tensor) -> None:
    if param.shape != loaded.shape:
        raise ValueError(f"expected shape {tuple(param.shape)}, got {tuple(loaded.shape)}")
    param.data.copy_(loaded)
