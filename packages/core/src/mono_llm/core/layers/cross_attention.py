"""Cross-attention of an encoder–decoder model over encoder keys/values in paged blocks.

A request's encoder output is turned into per-layer keys and values once, when the request
first runs, and written into its own fixed run of blocks of a `CrossKVPool` (one slot per
running request: every Whisper encoder output has the same length, 1500 positions for 30 s),
kept until the request finishes, is aborted or is preempted. Each step reads them through
block tables with the same paged-attention kernels as self-attention, without a causal
mask and without copying any keys or values: the runner installs the step's
`CrossAttentionMetadata` in the model's `CrossAttentionContext` (owned by the model, never
module-level, so engines sharing a process never see each other's entries).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mono_llm.core.layers.attention import StepContext, attend_paged


@dataclass(slots=True)
class CrossAttentionMetadata:
    """Where the step's sequences keep their encoder keys/values."""

    key_caches: list[torch.Tensor]  # per layer [num_blocks, block_size, heads, head_dim]
    value_caches: list[torch.Tensor]
    block_tables: torch.Tensor  # [num_seqs, blocks_per_seq] int32: each sequence's slot
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32, cumulative query lengths
    seq_lens: torch.Tensor  # [num_seqs] int32: the encoder length, for every sequence
    max_query_len: int  # host ints: grid sizes without a device sync
    encoder_len: int


class CrossAttentionContext(StepContext[CrossAttentionMetadata]):
    """The current step's `CrossAttentionMetadata` for one model instance."""

    __slots__ = ()
    _unset_message = "cross-attention ran outside a step (no encoder keys/values set)"

    @property
    def metadata(self) -> CrossAttentionMetadata:
        return self._current()


def cross_attention(
    query: torch.Tensor, layer: int, metadata: CrossAttentionMetadata, scale: float
) -> torch.Tensor:
    """query [num_tokens, num_heads, head_dim] -> [num_tokens, num_heads, head_dim], each
    token attending over every encoder position of its own sequence (no mask)."""
    return attend_paged(
        query,
        metadata.key_caches[layer],
        metadata.value_caches[layer],
        metadata.block_tables,
        metadata.query_start_loc,
        metadata.seq_lens,
        scale,
        decode_only=metadata.max_query_len == 1,
        causal=False,
        max_query_len=metadata.max_query_len,
        max_seq_len=metadata.encoder_len,
    )


class CrossKVPool:
    """Encoder keys/values of up to `num_slots` sequences, one fixed run of blocks each:
    one tensor [layers, 2, num_slots * blocks_per_seq, block_size, heads, head_dim]."""

    def __init__(
        self,
        *,
        num_layers: int,
        num_heads: int,
        head_dim: int,
        encoder_len: int,
        block_size: int,
        num_slots: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.encoder_len = encoder_len
        self.block_size = block_size
        self.blocks_per_seq = math.ceil(encoder_len / block_size)
        shape = (num_layers, 2, num_slots * self.blocks_per_seq, block_size, num_heads, head_dim)
        self.tensor = torch.zeros(shape, dtype=dtype, device=device)
        self.num_slots = num_slots
        self._free = list(range(num_slots - 1, -1, -1))
        self._slots: dict[str, int] = {}

    @staticmethod
    def bytes_per_slot(
        num_layers: int, num_heads: int, head_dim: int, encoder_len: int, block_size: int,
        dtype: torch.dtype,
    ) -> int:  # fmt: skip
        padded = math.ceil(encoder_len / block_size) * block_size
        return num_layers * 2 * padded * num_heads * head_dim * dtype.itemsize

    def __contains__(self, key: str) -> bool:
        return key in self._slots

    def __len__(self) -> int:
        return len(self._slots)

    def put(self, key: str, key_values: torch.Tensor) -> None:
        """Store one sequence's [layers, 2, encoder_len, heads, head_dim] in a free slot."""
        if not self._free:
            raise RuntimeError("no free cross-attention slot (more sequences than slots)")
        slot = self._free.pop()
        self._slots[key] = slot
        self.slot_view(slot)[:, :, : key_values.shape[2]].copy_(key_values)

    def slot_view(self, slot: int) -> torch.Tensor:
        """[layers, 2, blocks_per_seq * block_size, heads, head_dim] of one slot."""
        start = slot * self.blocks_per_seq
        run = self.tensor[:, :, start : start + self.blocks_per_seq]
        layers, _, blocks, block_size, heads, head_dim = run.shape
        return run.view(layers, 2, blocks * block_size, heads, head_dim)  # a view: writes land

    def free(self, key: str) -> None:
        """Release a sequence's slot (a no-op when it has none)."""
        slot = self._slots.pop(key, None)
        if slot is not None:
            self._free.append(slot)

    def block_table(self, key: str) -> range:
        start = self._slots[key] * self.blocks_per_seq
        return range(start, start + self.blocks_per_seq)
