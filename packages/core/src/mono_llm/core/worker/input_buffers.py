"""Persistent step-input buffers on CUDA: pinned host staging + device tensors, reused every step.

Each step's `StepInputs` are written into pinned host buffers and copied into device buffers
of fixed addresses with one async copy each (no host sync). Fixed addresses are what CUDA
graphs need (a graph replays reads of the same memory), and reusing them avoids an allocation
per step. Padding rules for graph sizes live here too, next to the buffers they fill.
"""

from __future__ import annotations

import numpy as np
import torch

from mono_llm.core.layers.attention import AttentionMetadata
from mono_llm.core.worker.step_inputs import StepInputs


class InputBuffers:
    """The device-side inputs of one step, at fixed addresses."""

    def __init__(
        self, device: torch.device, max_num_tokens: int, max_num_seqs: int, max_blocks: int
    ) -> None:
        self.device = device
        self.max_num_seqs = max_num_seqs
        tokens, seqs = max_num_tokens, max_num_seqs

        def pair(shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
            host = torch.zeros(shape, dtype=dtype, pin_memory=True)
            return host, torch.zeros(shape, dtype=dtype, device=device)

        self._host_input_ids, self.input_ids = pair((tokens,), torch.int64)
        self._host_positions, self.positions = pair((tokens,), torch.int64)
        self._host_slot_mapping, self.slot_mapping = pair((tokens,), torch.int64)
        self._host_logits_indices, self.logits_indices = pair((tokens,), torch.int64)
        self._host_query_start_loc, self.query_start_loc = pair((seqs + 1,), torch.int32)
        self._host_seq_lens, self.seq_lens = pair((seqs,), torch.int32)
        self._host_block_tables, self.block_tables = pair((seqs, max_blocks), torch.int32)
        # numpy views of the pinned buffers, made once (each .numpy() call costs ~1 us a step)
        self._np_input_ids = self._host_input_ids.numpy()
        self._np_positions = self._host_positions.numpy()
        self._np_slot_mapping = self._host_slot_mapping.numpy()
        self._np_seq_lens = self._host_seq_lens.numpy()
        self._np_query_start_loc = self._host_query_start_loc.numpy()
        self._np_block_tables = self._host_block_tables.numpy()
        self._np_logits_indices = self._host_logits_indices.numpy()
        # Set after each step's copies: the pinned buffers are rewritten only once the
        # previous step's async copies out of them have completed.
        self._staged = torch.cuda.Event()
        self._staged.record()

    def stage(
        self, inputs: StepInputs, pad_to: int | None = None, prefill_to: int | None = None
    ) -> None:
        """Copy the step's inputs into the persistent device buffers (async, no host sync).

        With `pad_to` (a decode graph size), rows past the batch are filled with harmless
        inputs: token 0 at position 0, no KV write (slot -1), a context of one token.
        With `prefill_to` (a prefill graph size), the tokens past the batch form one padding
        sequence (no KV write, block table of block 0), and the further sequence slots the
        graph was captured with are empty (no query tokens: their attention programs exit).
        """
        num_tokens, num_seqs = inputs.num_tokens, inputs.num_seqs
        n_tok = pad_to or prefill_to or num_tokens
        n_seq = pad_to or num_seqs
        table_rows = n_seq
        if prefill_to is not None:
            n_seq = min(prefill_to, self.max_num_seqs)
            # Only the real sequences and the padding one read their block-table rows.
            table_rows = min(num_seqs + 1, n_seq)
        self._staged.synchronize()
        np_ids, np_pos, np_slot = self._np_input_ids, self._np_positions, self._np_slot_mapping
        np_seq, np_qsl, np_bt = self._np_seq_lens, self._np_query_start_loc, self._np_block_tables
        np_ids[:num_tokens] = inputs.input_ids
        np_pos[:num_tokens] = inputs.positions
        np_slot[:num_tokens] = inputs.slot_mapping
        np_seq[:num_seqs] = inputs.seq_lens
        np_qsl[: num_seqs + 1] = inputs.query_start_loc
        width = inputs.block_tables.shape[1]
        np_bt[:table_rows] = 0
        np_bt[:num_seqs, :width] = inputs.block_tables
        if n_tok > num_tokens:
            np_ids[num_tokens:n_tok] = 0
            np_pos[num_tokens:n_tok] = 0
            np_slot[num_tokens:n_tok] = -1
        if pad_to is not None:
            np_seq[num_seqs:n_seq] = 1
            np_qsl[num_seqs + 1 : n_seq + 1] = np.arange(num_tokens + 1, n_tok + 1)
        elif prefill_to is not None:
            np_seq[num_seqs:n_seq] = 0
            np_qsl[num_seqs + 1 : n_seq + 1] = n_tok
            if n_tok > num_tokens:  # the padding sequence (prefill_graph_size keeps a slot)
                np_seq[num_seqs] = n_tok - num_tokens
        rows = len(inputs.logits_indices)
        self._np_logits_indices[:rows] = inputs.logits_indices
        copies = (
            (self.input_ids, self._host_input_ids, n_tok),
            (self.positions, self._host_positions, n_tok),
            (self.slot_mapping, self._host_slot_mapping, n_tok),
            (self.seq_lens, self._host_seq_lens, n_seq),
            (self.query_start_loc, self._host_query_start_loc, n_seq + 1),
            (self.block_tables, self._host_block_tables, table_rows),
            (self.logits_indices, self._host_logits_indices, rows),
        )
        for device_buf, host_buf, count in copies:
            device_buf[:count].copy_(host_buf[:count], non_blocking=True)
        self._staged.record()

    def stage_token_ids(self, token_ids: list[int]) -> None:
        """Only the first len(token_ids) token ids (a speculated decode step's one unknown)."""
        n = len(token_ids)
        self._staged.synchronize()
        self._np_input_ids[:n] = token_ids
        self.input_ids[:n].copy_(self._host_input_ids[:n], non_blocking=True)
        self._staged.record()

    def metadata(
        self, num_tokens: int, num_seqs: int, max_query_len: int, max_seq_len: int, decode: bool
    ) -> AttentionMetadata:
        """Attention metadata viewing the first rows of the buffers."""
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:num_tokens],
            block_tables=self.block_tables[:num_seqs],
            query_start_loc=self.query_start_loc[: num_seqs + 1],
            seq_lens=self.seq_lens[:num_seqs],
            max_query_len=max_query_len,
            max_seq_len=max_seq_len,
            decode_only=decode,
        )

    def fill_capture_inputs(self, num_tokens: int, num_seqs: int, decode: bool) -> None:
        """Harmless inputs to capture a graph with: no KV writes (slot -1), block 0 only.

        Decode: every sequence is a one-token context. Prefill: sequence 0 holds every token
        and the other slots are empty.
        """
        self.input_ids[:num_tokens].zero_()
        self.positions[:num_tokens].zero_()
        self.slot_mapping[:num_tokens].fill_(-1)
        self.block_tables[:num_seqs].zero_()
        if decode:
            self.seq_lens[:num_seqs].fill_(1)
            self.query_start_loc[: num_seqs + 1].copy_(
                torch.arange(num_seqs + 1, dtype=torch.int32)
            )
        else:
            self.seq_lens[:num_seqs].zero_()
            self.seq_lens[0] = num_tokens
            self.query_start_loc[: num_seqs + 1].fill_(num_tokens)
            self.query_start_loc[0] = 0
