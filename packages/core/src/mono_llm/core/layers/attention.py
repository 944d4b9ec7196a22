"""Per-step attention metadata, the forward context that carries it, and the paged attention layer.

`StepContext` (the per-model slot the runner installs metadata in) and `attend_paged` (the
kernel choice over a paged cache) are shared with cross-attention (layers/cross_attention.py).

The runner builds one `AttentionMetadata` per step and installs it in the model's
`ForwardContext`; attention layers read it from there, so model `forward(positions, hidden)`
signatures stay as small as the HF modules they mirror. Each model instance owns its own
context: several engines (a chat model and an embedding model, or two chat models) run their
steps on different threads of one process, and a context shared between them would hand one
engine's slot mapping to another's forward pass. Everything in the metadata is a device tensor
except the host-side maxima, which the kernels use to size their grids without a device sync.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch
from torch import nn

from mono_llm.core.layers.ops import ops

M = TypeVar("M")


@dataclass(slots=True)
class AttentionMetadata:
    """Where this step's tokens sit in the paged KV cache."""

    slot_mapping: torch.Tensor  # [num_tokens] int64: block_id * block_size + offset, -1 = skip
    block_tables: torch.Tensor  # [num_seqs, max_blocks_per_seq] int32
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32, cumulative query lengths
    seq_lens: torch.Tensor  # [num_seqs] int32: context length including this step's tokens
    max_query_len: int  # host ints: grid sizes without a device sync
    max_seq_len: int
    decode_only: bool = False  # every sequence has exactly one query token
    causal: bool = True  # False for encoder (pooling) models


class StepContext(Generic[M]):
    """One model instance's slot for the current step's metadata of one kind.

    A model creates one and hands it to every layer that reads that metadata; its runner
    installs the metadata around each forward pass. Never module-level: that would be state
    shared by every engine in the process.
    """

    __slots__ = ("_metadata",)
    # Why a layer that finds no metadata fails: it ran outside a step.
    _unset_message = "ran outside a model step (no metadata set)"

    def __init__(self) -> None:
        self._metadata: M | None = None

    def _current(self) -> M:
        if self._metadata is None:
            raise RuntimeError(self._unset_message)
        return self._metadata

    @contextlib.contextmanager
    def use(self, metadata: M) -> Iterator[M]:
        """Install `metadata` for the duration of one forward pass (or graph capture)."""
        previous = self._metadata
        self._metadata = metadata
        try:
            yield metadata
        finally:
            self._metadata = previous


class ForwardContext(StepContext[AttentionMetadata]):
    """The current step's attention metadata for one model instance."""

    __slots__ = ()
    _unset_message = "attention ran outside a model step (no AttentionMetadata set)"

    @property
    def attention(self) -> AttentionMetadata:
        return self._current()


def attend_paged(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    *,
    decode_only: bool,
    causal: bool,
    max_query_len: int,
    max_seq_len: int,
    softcap: float | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """query [num_tokens, num_heads, head_dim] over keys/values already in paged blocks ->
    [num_tokens, num_heads, head_dim]: the decode kernel when every sequence has one query
    token (`decode_only`), else the general one. Self-attention and cross-attention both read
    their caches through here, so a kernel change reaches both. `softcap` (scores capped at
    ±softcap through tanh) and `window` (sliding-window attention) are off unless given; the
    kernels of layers without them are the same as before either existed."""
    options = {}
    if softcap is not None:
        options["softcap"] = softcap
    if window is not None:
        options["window"] = window
    if decode_only:
        return ops.paged_decode_attention(
            query,
            key_cache,
            value_cache,
            block_tables,
            seq_lens,
            scale,
            max_seq_len=max_seq_len,
            **options,
        )
    return ops.paged_attention(
        query,
        key_cache,
        value_cache,
        block_tables,
        query_start_loc,
        seq_lens,
        scale,
        causal=causal,
        max_query_len=max_query_len,
        max_seq_len=max_seq_len,
        **options,
    )


class PagedAttention(nn.Module):
    """Writes this step's K/V into the layer's cache blocks, then attends over the cache.

    The runner binds `key_cache` / `value_cache` ([num_blocks, block_size, num_kv_heads,
    head_dim] each) once it has sized the cache. `softcap` caps the attention scores
    (softcap * tanh(score / softcap), Gemma 2); `sliding_window` limits each query to itself
    and the `sliding_window - 1` keys before it (this layer only: models alternate).
    """

    def __init__(
        self,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        scale: float,
        context: ForwardContext,
        *,
        softcap: float | None = None,
        sliding_window: int | None = None,
    ) -> None:
        super().__init__()
        # A tuple keeps the shared context out of nn.Module attribute handling.
        self._context = (context,)
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads={num_heads} is not a multiple of {num_kv_heads=}")
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = scale
        self.softcap = softcap
        self.sliding_window = sliding_window
        self.key_cache: torch.Tensor | None = None
        self.value_cache: torch.Tensor | None = None

    def bind_cache(self, key_cache: torch.Tensor, value_cache: torch.Tensor) -> None:
        self.key_cache = key_cache
        self.value_cache = value_cache

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """query [num_tokens, num_heads, head_dim], key/value [num_tokens, num_kv_heads,
        head_dim] -> [num_tokens, num_heads, head_dim]."""
        metadata = self._context[0].attention
        key_cache, value_cache = self.key_cache, self.value_cache
        if key_cache is None or value_cache is None:
            raise RuntimeError("PagedAttention has no KV cache bound")
        ops.write_kv_cache(key, value, key_cache, value_cache, metadata.slot_mapping)
        return attend_paged(
            query,
            key_cache,
            value_cache,
            metadata.block_tables,
            metadata.query_start_loc,
            metadata.seq_lens,
            self.scale,
            decode_only=metadata.decode_only,
            causal=metadata.causal,
            max_query_len=metadata.max_query_len,
            max_seq_len=metadata.max_seq_len,
            softcap=self.softcap,
            window=self.sliding_window if metadata.causal else None,
        )
