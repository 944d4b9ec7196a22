"""Per-step attention metadata and the paged attention layer.

The runner builds one `AttentionMetadata` per step and installs it with `set_attention_metadata`;
attention layers read it from there, so model `forward(positions, hidden)` signatures stay as
small as the HF modules they mirror (nano-vllm's `utils/context.py` idea). Everything in it is a
device tensor except the host-side maxima, which the kernels use to size their grids without a
device sync.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from mono_llm.core.layers.ops import ops


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


_current: AttentionMetadata | None = None


def set_attention_metadata(metadata: AttentionMetadata | None) -> None:
    global _current
    _current = metadata


def get_attention_metadata() -> AttentionMetadata:
    if _current is None:
        raise RuntimeError("attention ran outside a model step (no AttentionMetadata set)")
    return _current


@contextlib.contextmanager
def attention_metadata(metadata: AttentionMetadata) -> Iterator[AttentionMetadata]:
    """Install `metadata` for the duration of one forward pass."""
    previous = _current
    set_attention_metadata(metadata)
    try:
        yield metadata
    finally:
        set_attention_metadata(previous)


class PagedAttention(nn.Module):
    """Writes this step's K/V into the layer's cache blocks, then attends over the cache.

    The runner binds `key_cache` / `value_cache` ([num_blocks, block_size, num_kv_heads,
    head_dim] each) once it has sized the cache.
    """

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float) -> None:
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads={num_heads} is not a multiple of {num_kv_heads=}")
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = scale
        self.key_cache: torch.Tensor | None = None
        self.value_cache: torch.Tensor | None = None

    def bind_cache(self, key_cache: torch.Tensor, value_cache: torch.Tensor) -> None:
        self.key_cache = key_cache
        self.value_cache = value_cache

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """query [num_tokens, num_heads, head_dim], key/value [num_tokens, num_kv_heads,
        head_dim] -> [num_tokens, num_heads, head_dim]."""
        metadata = get_attention_metadata()
        key_cache, value_cache = self.key_cache, self.value_cache
        if key_cache is None or value_cache is None:
            raise RuntimeError("PagedAttention has no KV cache bound")
        ops.write_kv_cache(key, value, key_cache, value_cache, metadata.slot_mapping)
        if metadata.decode_only:
            return ops.paged_decode_attention(
                query,
                key_cache,
                value_cache,
                metadata.block_tables,
                metadata.seq_lens,
                self.scale,
                max_seq_len=metadata.max_seq_len,
            )
        return ops.paged_attention(
            query,
            key_cache,
            value_cache,
            metadata.block_tables,
            metadata.query_start_loc,
            metadata.seq_lens,
            self.scale,
            causal=metadata.causal,
            max_query_len=metadata.max_query_len,
            max_seq_len=metadata.max_seq_len,
        )
