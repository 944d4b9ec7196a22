"""A step's flattened inputs: the ragged batch of sequence slices as host arrays.

`prepare_step_inputs` turns a `ModelBatch` into one flat token batch (ids, positions, KV
slots) plus the per-sequence arrays attention needs, vectorised over tokens with a loop over
sequences only. It is pure host work (numpy), shared by every runner; moving the arrays to
the device is the runner's business (input_buffers.py on CUDA).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain

import numpy as np
import torch

from mono_llm.core.errors import EngineError
from mono_llm.core.layers.mrope import step_mrope_positions
from mono_llm.core.worker.batch import LogitsWanted, ModelBatch, SequenceSlice


@dataclass(slots=True)
class StepInputs:
    """A step's flattened inputs on the host (numpy) before they move to the device."""

    input_ids: np.ndarray  # [num_tokens] int64
    positions: np.ndarray  # [num_tokens] int64
    slot_mapping: np.ndarray  # [num_tokens] int64
    query_start_loc: np.ndarray  # [num_seqs + 1] int32
    seq_lens: np.ndarray  # [num_seqs] int32
    block_tables: np.ndarray  # [num_seqs, width] int32
    logits_indices: np.ndarray  # [num_rows] int64: token rows whose logits are returned
    max_query_len: int
    max_seq_len: int
    # (first flat token row, embeddings [rows, hidden]) that replace the token table's rows
    # for those tokens; empty for a text-only step (then the model embeds the ids itself).
    embeds_overrides: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    # M-RoPE (Qwen2-VL) steps that run prompt tokens of a prompt with media: the rope
    # positions [3, num_tokens] (time, height, width); None otherwise. `positions` then still
    # holds the 1-D KV positions; text steps of such sequences get `positions` shifted by
    # their delta instead (see layers/mrope.py), after the KV slots were computed.
    mrope_positions: np.ndarray | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens)

    @property
    def is_decode_only(self) -> bool:
        return self.max_query_len == 1


def prepare_step_inputs(
    batch: ModelBatch, block_size: int, max_num_tokens: int, max_num_seqs: int
) -> StepInputs:
    """Flatten the slices on the host; vectorised over tokens, a loop over sequences only."""
    slices = batch.slices
    if not slices:
        raise EngineError("ModelRunner.execute got an empty batch")
    num_seqs = len(slices)
    query_lens = np.fromiter((len(s.token_ids) for s in slices), np.int32, num_seqs)
    num_tokens = int(query_lens.sum())
    if num_tokens > max_num_tokens or num_seqs > max_num_seqs:
        raise EngineError(
            f"step of {num_tokens} tokens / {num_seqs} sequences exceeds the runner's "
            f"limits ({max_num_tokens} / {max_num_seqs})"
        )
    computed = np.fromiter((s.num_computed_tokens for s in slices), np.int32, num_seqs)
    seq_lens = computed + query_lens
    query_start_loc = np.zeros(num_seqs + 1, np.int32)
    np.cumsum(query_lens, out=query_start_loc[1:])
    # Block tables: one flat read of every table, scattered into a zero-padded matrix
    # (a row-by-row fill costs ~3 us a sequence, 0.7 ms at 256 sequences).
    table_lens = np.fromiter((len(s.block_table) for s in slices), np.int64, num_seqs)
    short = np.flatnonzero(table_lens * block_size < seq_lens)
    if short.size:
        i = int(short[0])
        raise EngineError(f"slice {i}: {table_lens[i]} blocks cannot hold {seq_lens[i]} tokens")
    width = int(table_lens.max())
    flat_tables = np.fromiter(
        chain.from_iterable(s.block_table for s in slices), np.int32, int(table_lens.sum())
    )
    block_tables = np.zeros((num_seqs, width), np.int32)
    block_tables[np.arange(width) < table_lens[:, None]] = flat_tables
    input_ids = np.fromiter(chain.from_iterable(s.token_ids for s in slices), np.int64, num_tokens)
    seq_index = np.repeat(np.arange(num_seqs), query_lens)
    positions = (
        np.arange(num_tokens, dtype=np.int64) - query_start_loc[seq_index] + computed[seq_index]
    )
    slot_mapping = (
        block_tables[seq_index, positions // block_size].astype(np.int64) * block_size
        + positions % block_size
    )
    mrope_positions = None
    if any(s.mrope_positions is not None for s in slices):
        if any(s.needs_mrope_positions for s in slices):
            mrope_positions = np.concatenate(
                [
                    step_mrope_positions(
                        s.mrope_positions, s.mrope_delta, s.num_computed_tokens, s.seq_len
                    )
                    for s in slices
                ],
                axis=1,
            )
        deltas = np.fromiter((s.mrope_delta for s in slices), np.int64, num_seqs)
        positions = positions + deltas[seq_index]  # rope positions (slots are computed)
    return StepInputs(
        input_ids=input_ids,
        positions=positions,
        slot_mapping=slot_mapping,
        query_start_loc=query_start_loc,
        seq_lens=seq_lens.astype(np.int32),
        block_tables=block_tables,
        logits_indices=logits_indices(slices, query_start_loc),
        max_query_len=int(query_lens.max()),
        max_seq_len=int(seq_lens.max()),
        embeds_overrides=_embeds_overrides(slices, query_start_loc),
        mrope_positions=mrope_positions,
    )


def next_decode_inputs(
    inputs: StepInputs, block_size: int, table_lens: list[int]
) -> StepInputs | None:
    """The inputs of the decode step after `inputs` if each sequence advances by one token
    (token ids left zero: they are not known yet); None when some sequence's next token
    needs a block its table (of `table_lens[i]` blocks) does not have yet."""
    num_seqs = inputs.num_seqs
    next_pos = inputs.seq_lens.astype(np.int64)  # [num_seqs]: each next token's position
    block_index = next_pos // block_size
    block_tables = inputs.block_tables
    if (block_index >= np.asarray(table_lens)).any():
        return None
    blocks = block_tables[np.arange(num_seqs), block_index]
    slot_mapping = blocks.astype(np.int64) * block_size + next_pos % block_size
    return StepInputs(
        input_ids=np.zeros(num_seqs, np.int64),
        positions=next_pos,
        slot_mapping=slot_mapping,
        query_start_loc=inputs.query_start_loc,
        seq_lens=(next_pos + 1).astype(np.int32),
        block_tables=block_tables,
        logits_indices=inputs.logits_indices,
        max_query_len=1,
        max_seq_len=inputs.max_seq_len + 1,
    )


def logits_indices(slices: list[SequenceSlice], query_start_loc: np.ndarray) -> np.ndarray:
    """Token rows whose logits the scheduler wants, in slice order."""
    ends = query_start_loc[1:]
    wanted = np.fromiter((s.logits for s in slices), np.int8, len(slices))
    if (wanted == LogitsWanted.LAST).all():  # the common case, vectorised
        return (ends - 1).astype(np.int64)
    parts = []
    for i, w in enumerate(wanted):
        if w == LogitsWanted.LAST:
            parts.append(np.array([ends[i] - 1], np.int64))
        elif w == LogitsWanted.ALL:
            parts.append(np.arange(query_start_loc[i], ends[i], dtype=np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _embeds_overrides(
    slices: list[SequenceSlice], query_start_loc: np.ndarray
) -> list[tuple[int, torch.Tensor]]:
    overrides: list[tuple[int, torch.Tensor]] = []
    for i, s in enumerate(slices):
        for override in s.embeds_overrides or ():
            rows = override.embeds.shape[0]
            if override.offset < 0 or override.offset + rows > len(s.token_ids):
                raise EngineError(
                    f"slice {i}: embeddings for rows {override.offset}..{override.offset + rows} "
                    f"fall outside its {len(s.token_ids)} tokens"
                )
            overrides.append((int(query_start_loc[i]) + override.offset, override.embeds))
    return overrides
