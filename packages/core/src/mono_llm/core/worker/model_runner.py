"""Runs one engine step: a `ModelBatch` of sequence slices in, float32 logits rows out.

The runner owns the model and the paged KV cache. Each step it flattens the slices into one
ragged batch (no padding), installs the step's `AttentionMetadata`, runs the model and
projects only the rows the scheduler asked for onto the vocabulary.

On CUDA the step inputs go through pinned host buffers into persistent device buffers (one
async copy each, no host sync), and decode-only steps replay a CUDA graph captured for the next
larger batch size in 1, 2, 4, ..., max_num_seqs: at small batch sizes a decode step is launch
bound, and the graph replaces hundreds of kernel launches by one. With
`cuda_graph_max_prefill_tokens`, prefill and mixed steps of few tokens replay graphs of the model
body captured for 16, 32, 64, ... tokens (a 128-token prefill launches ~350 kernels from Python,
~19 ms of host time for ~6 ms of GPU work on an H100); the lm_head then runs eagerly on the
rows asked for only.
"""

from __future__ import annotations

import logging
import math
import operator
import time
from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch
from torch import nn

from mono_llm.core.config import EngineConfig
from mono_llm.core.errors import EngineError
from mono_llm.core.layers.attention import AttentionMetadata
from mono_llm.core.layers.ops import HOST_SYNCING_REFERENCES, torch_ops_requested
from mono_llm.core.models.loader import build_model
from mono_llm.core.worker.batch import LogitsWanted, ModelBatch, SequenceSlice

logger = logging.getLogger(__name__)

_CPU_DEFAULT_KV_GIB = 1.0
# Kept free of the profiled peak for what the profile cannot see: CUDA graphs' private pool,
# allocator fragmentation, the sampler's temporaries beyond the ones simulated.
_CUDA_HEADROOM_BYTES = 512 * 1024**2


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


@dataclass(slots=True)
class DecodeSpeculation:
    """The next decode step's inputs, staged while the GPU ran this one (all but token ids).

    They hold if the next batch has the same sequences in the same order, each one token
    further: block tables are append-only lists owned by the KV cache manager, so the same
    list object at the same length has the same contents.
    """

    inputs: StepInputs
    graph_size: int
    tables: list[list[int]]  # each slice's block-table list (the live object)
    table_lens: list[int]
    computed: list[int]  # num_computed_tokens each slice must have


def prefill_graph_sizes(limit: int, max_num_tokens: int, max_model_len: int) -> list[int]:
    """16, 32, 64, ... up to min(limit, max_num_tokens, max_model_len).

    Capped by max_model_len so that one sequence may hold every token of a size (the capture
    inputs, and the padding sequence of a replay), keeping block-table reads inside its row.
    """
    cap = min(limit, max_num_tokens, max_model_len)
    return [16 << i for i in range(32) if (16 << i) <= cap]


def decode_graph_sizes(max_num_seqs: int) -> list[int]:
    """1, 2, 4, ... up to max_num_seqs (included even when it is not a power of two)."""
    sizes = [1 << i for i in range(max_num_seqs.bit_length()) if (1 << i) <= max_num_seqs]
    if sizes[-1] != max_num_seqs:
        sizes.append(max_num_seqs)
    return sizes


class ModelRunner:
    """Owns the model and its KV cache; `execute(batch)` runs one step."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        model_config = config.model_config
        sched = config.scheduler_config
        self.device = torch.device(config.device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = model_config.dtype
        self.block_size = config.cache_config.block_size
        self.max_model_len = sched.max_model_len
        self.max_num_seqs = sched.max_num_seqs
        self.max_num_tokens = max(sched.max_num_batched_tokens, sched.max_num_seqs)
        self.max_blocks_per_seq = math.ceil(self.max_model_len / self.block_size)

        start = time.perf_counter()
        self.model: nn.Module = build_model(model_config, self.device)
        self.vocab_size: int = self.model.vocab_size
        self.hidden_size: int = self.model.hidden_size
        self._attention_layers = self.model.attention_layers()
        first = self._attention_layers[0]
        self._kv_shape = (self.block_size, first.num_kv_heads, first.head_dim)
        logger.info("model loaded in %.1f s", time.perf_counter() - start)

        self._use_cuda = self.device.type == "cuda"
        if self._use_cuda:
            self._allocate_persistent_buffers()
        self.num_blocks = self._determine_num_blocks()
        config.cache_config.num_blocks = self.num_blocks
        self._allocate_kv_cache(self.num_blocks)
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._prefill_graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.num_prefill_graph_replays = 0  # for tests: prefill/mixed steps that replayed
        self._overlap_decode = config.overlap_decode_prepare
        self._speculation: DecodeSpeculation | None = None
        self.num_speculated_decode_steps = 0  # for tests: decode steps that used it
        redirected = torch_ops_requested() & HOST_SYNCING_REFERENCES
        if self._use_cuda and redirected and not config.enforce_eager:
            logger.warning(
                "CUDA graphs disabled: %s run through host-syncing references", redirected
            )
        elif self._use_cuda and not config.enforce_eager:
            start = time.perf_counter()
            self._capture_decode_graphs()
            self._capture_prefill_graphs(config.cuda_graph_max_prefill_tokens)
            logger.info(
                "captured %d decode and %d prefill CUDA graphs in %.1f s",
                len(self._graphs),
                len(self._prefill_graphs),
                time.perf_counter() - start,
            )

    # ------------------------------------------------------------------ public API

    @torch.inference_mode()
    def execute(self, batch: ModelBatch) -> torch.Tensor:
        """Float32 logits [sum(batch.logits_row_counts()), vocab] on `self.device`."""
        speculation, self._speculation = self._speculation, None
        if speculation is not None and _speculation_holds(speculation, batch.slices):
            # Only the token ids are new: the step's host preparation already ran while the
            # GPU executed the previous step (H100, workload B: 6.81 -> 6.61 ms/token).
            self._stage_token_ids(batch.slices)
            self._graphs[speculation.graph_size].replay()
            self.num_speculated_decode_steps += 1
            self._speculate_decode(speculation.inputs, batch.slices, speculation.graph_size)
            return self._graph_logits[: len(batch.slices)]
        inputs = self._prepare(batch)
        num_seqs = len(batch.slices)
        rows = len(inputs.logits_indices)
        graph_size = self._graph_size(inputs.max_query_len == 1, num_seqs)
        if graph_size is not None:
            self._stage(inputs, pad_to=graph_size)
            self._graphs[graph_size].replay()
            if rows == num_seqs:  # one row per sequence, in order: the graph's own rows
                if self._overlap_decode:
                    self._speculate_decode(inputs, batch.slices, graph_size)
                return self._graph_logits[:rows]
            return self._graph_logits[:graph_size].index_select(0, self._logits_indices[:rows])
        prefill_size = self._prefill_graph_size(inputs)
        if prefill_size is not None:
            self._stage(inputs, prefill_to=prefill_size)
            self._prefill_graphs[prefill_size].replay()
            self.num_prefill_graph_replays += 1
            hidden, logits_indices = self._prefill_hidden, self._logits_indices[:rows]
        else:
            hidden, logits_indices = self._forward(inputs, inputs.max_query_len == 1)
        if len(inputs.logits_indices) == 0:
            return torch.empty((0, self.vocab_size), dtype=torch.float32, device=self.device)
        return self.model.compute_logits(hidden.index_select(0, logits_indices))

    @torch.inference_mode()
    def execute_hidden(self, batch: ModelBatch) -> torch.Tensor:
        """Final hidden states [batch.num_tokens, hidden] of every token (for pooling)."""
        self._speculation = None  # its staged buffers are overwritten below
        inputs = self._prepare(batch)
        hidden, _ = self._forward(inputs, inputs.max_query_len == 1)
        return hidden

    @property
    def kv_cache_bytes_per_block(self) -> int:
        elements = 2 * len(self._attention_layers) * math.prod(self._kv_shape)
        return elements * self.dtype.itemsize

    # ------------------------------------------------------------------ step inputs

    def _prepare(self, batch: ModelBatch) -> StepInputs:
        """Flatten the slices on the host; vectorised over tokens, a loop over sequences only."""
        slices = batch.slices
        if not slices:
            raise EngineError("ModelRunner.execute got an empty batch")
        num_seqs = len(slices)
        query_lens = np.fromiter((len(s.token_ids) for s in slices), np.int32, num_seqs)
        num_tokens = int(query_lens.sum())
        if num_tokens > self.max_num_tokens or num_seqs > self.max_num_seqs:
            raise EngineError(
                f"step of {num_tokens} tokens / {num_seqs} sequences exceeds the runner's "
                f"limits ({self.max_num_tokens} / {self.max_num_seqs})"
            )
        computed = np.fromiter((s.num_computed_tokens for s in slices), np.int32, num_seqs)
        seq_lens = computed + query_lens
        query_start_loc = np.zeros(num_seqs + 1, np.int32)
        np.cumsum(query_lens, out=query_start_loc[1:])
        # Block tables: one flat read of every table, scattered into a zero-padded matrix
        # (a row-by-row fill costs ~3 us a sequence, 0.7 ms at 256 sequences).
        table_lens = np.fromiter((len(s.block_table) for s in slices), np.int64, num_seqs)
        short = np.flatnonzero(table_lens * self.block_size < seq_lens)
        if short.size:
            i = int(short[0])
            raise EngineError(f"slice {i}: {table_lens[i]} blocks cannot hold {seq_lens[i]} tokens")
        width = int(table_lens.max())
        flat_tables = np.fromiter(
            chain.from_iterable(s.block_table for s in slices), np.int32, int(table_lens.sum())
        )
        block_tables = np.zeros((num_seqs, width), np.int32)
        block_tables[np.arange(width) < table_lens[:, None]] = flat_tables
        input_ids = np.fromiter(
            chain.from_iterable(s.token_ids for s in slices), np.int64, num_tokens
        )
        seq_index = np.repeat(np.arange(num_seqs), query_lens)
        positions = (
            np.arange(num_tokens, dtype=np.int64) - query_start_loc[seq_index] + computed[seq_index]
        )
        slot_mapping = (
            block_tables[seq_index, positions // self.block_size].astype(np.int64) * self.block_size
            + positions % self.block_size
        )
        return StepInputs(
            input_ids=input_ids,
            positions=positions,
            slot_mapping=slot_mapping,
            query_start_loc=query_start_loc,
            seq_lens=seq_lens.astype(np.int32),
            block_tables=block_tables,
            logits_indices=_logits_indices(slices, query_start_loc),
            max_query_len=int(query_lens.max()),
            max_seq_len=int(seq_lens.max()),
        )

    def _forward(self, inputs: StepInputs, decode_only: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Eager forward; returns (hidden [num_tokens, hidden], logits_indices on device)."""
        num_tokens, num_seqs = len(inputs.input_ids), len(inputs.seq_lens)
        if self._use_cuda:
            self._stage(inputs, pad_to=None)
            metadata = self._buffer_metadata(
                num_tokens, num_seqs, inputs.max_query_len, inputs.max_seq_len, decode_only
            )
            input_ids = self._input_ids[:num_tokens]
            positions = self._positions[:num_tokens]
            logits_indices = self._logits_indices[: len(inputs.logits_indices)]
        else:
            metadata = AttentionMetadata(
                slot_mapping=torch.from_numpy(inputs.slot_mapping),
                block_tables=torch.from_numpy(inputs.block_tables),
                query_start_loc=torch.from_numpy(inputs.query_start_loc),
                seq_lens=torch.from_numpy(inputs.seq_lens),
                max_query_len=inputs.max_query_len,
                max_seq_len=inputs.max_seq_len,
                decode_only=decode_only,
            )
            input_ids = torch.from_numpy(inputs.input_ids)
            positions = torch.from_numpy(inputs.positions)
            logits_indices = torch.from_numpy(inputs.logits_indices)
        with self.model.forward_context.use(metadata):
            hidden = self.model(input_ids, positions)
        return hidden, logits_indices

    # ------------------------------------------------------------------ CUDA buffers

    def _allocate_persistent_buffers(self) -> None:
        tokens, seqs, blocks = self.max_num_tokens, self.max_num_seqs, self.max_blocks_per_seq

        def pair(shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
            host = torch.zeros(shape, dtype=dtype, pin_memory=True)
            return host, torch.zeros(shape, dtype=dtype, device=self.device)

        self._host_input_ids, self._input_ids = pair((tokens,), torch.int64)
        self._host_positions, self._positions = pair((tokens,), torch.int64)
        self._host_slot_mapping, self._slot_mapping = pair((tokens,), torch.int64)
        self._host_logits_indices, self._logits_indices = pair((tokens,), torch.int64)
        self._host_query_start_loc, self._query_start_loc = pair((seqs + 1,), torch.int32)
        self._host_seq_lens, self._seq_lens = pair((seqs,), torch.int32)
        self._host_block_tables, self._block_tables = pair((seqs, blocks), torch.int32)
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

    def _stage(
        self, inputs: StepInputs, pad_to: int | None = None, prefill_to: int | None = None
    ) -> None:
        """Copy the step's inputs into the persistent device buffers (async, no host sync).

        With `pad_to` (a decode graph size), rows past the batch are filled with harmless
        inputs: token 0 at position 0, no KV write (slot -1), a context of one token.
        With `prefill_to` (a prefill graph size), the tokens past the batch form one padding
        sequence (no KV write, block table of block 0), and the further sequence slots the
        graph was captured with are empty (no query tokens: their attention programs exit).
        """
        num_tokens, num_seqs = len(inputs.input_ids), len(inputs.seq_lens)
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
            if n_tok > num_tokens:  # the padding sequence (_prefill_graph_size keeps a slot)
                np_seq[num_seqs] = n_tok - num_tokens
        rows = len(inputs.logits_indices)
        self._np_logits_indices[:rows] = inputs.logits_indices
        copies = (
            (self._input_ids, self._host_input_ids, n_tok),
            (self._positions, self._host_positions, n_tok),
            (self._slot_mapping, self._host_slot_mapping, n_tok),
            (self._seq_lens, self._host_seq_lens, n_seq),
            (self._query_start_loc, self._host_query_start_loc, n_seq + 1),
            (self._block_tables, self._host_block_tables, table_rows),
            (self._logits_indices, self._host_logits_indices, rows),
        )
        for device_buf, host_buf, count in copies:
            device_buf[:count].copy_(host_buf[:count], non_blocking=True)
        self._staged.record()

    def _speculate_decode(
        self, inputs: StepInputs, slices: list[SequenceSlice], graph_size: int
    ) -> None:
        """Stage the next decode step of the same sequences, assuming each advances by one
        token, while the GPU runs this step. Its copies are queued behind this step's graph,
        which has read the buffers by then. Skipped when some sequence's next token needs a
        block it does not have yet (the scheduler allocates it at the next step)."""
        num_seqs = len(slices)
        next_pos = inputs.seq_lens.astype(np.int64)  # [num_seqs]: each next token's position
        tables = [s.block_table for s in slices]
        table_lens = [len(t) for t in tables]
        block_index = next_pos // self.block_size
        if (block_index >= np.asarray(table_lens)).any():
            return
        block_tables = inputs.block_tables
        slot_mapping = (
            block_tables[np.arange(num_seqs), block_index].astype(np.int64) * self.block_size
            + next_pos % self.block_size
        )
        upcoming = StepInputs(
            input_ids=np.zeros(num_seqs, np.int64),  # written once known (_stage_token_ids)
            positions=next_pos,
            slot_mapping=slot_mapping,
            query_start_loc=inputs.query_start_loc,
            seq_lens=(next_pos + 1).astype(np.int32),
            block_tables=block_tables,
            logits_indices=inputs.logits_indices,
            max_query_len=1,
            max_seq_len=inputs.max_seq_len + 1,
        )
        self._stage(upcoming, pad_to=graph_size)
        self._speculation = DecodeSpeculation(
            upcoming, graph_size, tables, table_lens, next_pos.tolist()
        )

    def _stage_token_ids(self, slices: list[SequenceSlice]) -> None:
        """The one input a speculated decode step still needs: each slice's token id."""
        num_seqs = len(slices)
        self._staged.synchronize()
        self._np_input_ids[:num_seqs] = [s.token_ids[0] for s in slices]
        self._input_ids[:num_seqs].copy_(self._host_input_ids[:num_seqs], non_blocking=True)
        self._staged.record()

    def _buffer_metadata(
        self, num_tokens: int, num_seqs: int, max_query_len: int, max_seq_len: int, decode: bool
    ) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self._slot_mapping[:num_tokens],
            block_tables=self._block_tables[:num_seqs],
            query_start_loc=self._query_start_loc[: num_seqs + 1],
            seq_lens=self._seq_lens[:num_seqs],
            max_query_len=max_query_len,
            max_seq_len=max_seq_len,
            decode_only=decode,
        )

    # ------------------------------------------------------------------ KV cache

    def _determine_num_blocks(self) -> int:
        cache = self.config.cache_config
        per_block = self.kv_cache_bytes_per_block
        useful = self.max_num_seqs * self.max_blocks_per_seq
        if cache.num_gpu_blocks_override is not None:
            return cache.num_gpu_blocks_override
        if cache.kv_cache_memory_gib is not None:
            budget = int(cache.kv_cache_memory_gib * 1024**3)
        elif self._use_cuda:
            budget = self._profile_kv_budget()
        else:
            budget = int(_CPU_DEFAULT_KV_GIB * 1024**3)
        num_blocks = min(budget // per_block, useful)
        if num_blocks < 1:
            raise EngineError(
                f"no memory left for the KV cache (budget {budget / 1024**3:.2f} GiB); raise "
                "gpu_memory_utilization or kv_cache_memory_gib, or lower max_num_batched_tokens"
            )
        if num_blocks < self.max_blocks_per_seq:
            logger.warning(
                "KV cache of %d blocks holds fewer than max_model_len=%d tokens",
                num_blocks,
                self.max_model_len,
            )
        logger.info(
            "KV cache: %d blocks of %d tokens (%.2f GiB)",
            num_blocks,
            self.block_size,
            num_blocks * per_block / 1024**3,
        )
        return num_blocks

    def _profile_kv_budget(self) -> int:
        """Bytes left for the KV cache after a forward of the largest step the scheduler makes.

        The profile runs max_num_batched_tokens tokens with a temporary cache just big enough
        for them, then the lm_head and a softmax over max_num_seqs rows (the sampler's share).
        """
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        tokens = self.max_num_tokens
        seq_len = min(tokens, self.max_model_len)
        num_seqs = min(math.ceil(tokens / seq_len), self.max_num_seqs)
        blocks_per_seq = math.ceil(seq_len / self.block_size)
        temp_blocks = num_seqs * blocks_per_seq
        self._allocate_kv_cache(temp_blocks)
        slices = []
        remaining = tokens
        for i in range(num_seqs):
            n = min(seq_len, remaining)
            remaining -= n
            table = list(range(i * blocks_per_seq, (i + 1) * blocks_per_seq))
            slices.append(SequenceSlice([0] * n, 0, table, LogitsWanted.NONE))
        with torch.inference_mode():
            hidden, _ = self._forward(self._prepare(ModelBatch(slices)), False)
            rows = min(self.max_num_seqs, tokens)
            logits = self.model.compute_logits(hidden[:rows])
            torch.log_softmax(logits, dim=-1)
            torch.softmax(logits, dim=-1)
        del hidden, logits
        torch.cuda.synchronize(self.device)
        temp_bytes = temp_blocks * self.kv_cache_bytes_per_block
        peak = torch.cuda.max_memory_allocated(self.device) - temp_bytes
        self._free_kv_cache()
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(self.device)
        # Memory of other processes and the CUDA context, outside torch's allocator.
        non_torch = (total - free) - torch.cuda.memory_reserved(self.device)
        limit = total * self.config.cache_config.gpu_memory_utilization
        budget = int(limit - peak - non_torch - _CUDA_HEADROOM_BYTES)
        logger.info(
            "profile: peak %.2f GiB (weights + activations), non-torch %.2f GiB, KV budget %.2f GiB",
            peak / 1024**3,
            non_torch / 1024**3,
            budget / 1024**3,
        )
        return budget

    def _allocate_kv_cache(self, num_blocks: int) -> None:
        """One tensor [layers, 2, num_blocks, block_size, kv_heads, head_dim], zeroed: padded
        graph rows read block 0, and zeros keep them finite."""
        shape = (len(self._attention_layers), 2, num_blocks, *self._kv_shape)
        self.kv_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        for i, layer in enumerate(self._attention_layers):
            layer.bind_cache(self.kv_cache[i, 0], self.kv_cache[i, 1])

    def _free_kv_cache(self) -> None:
        for layer in self._attention_layers:
            layer.key_cache = layer.value_cache = None
        del self.kv_cache

    # ------------------------------------------------------------------ CUDA graphs

    def _graph_size(self, decode_only: bool, num_seqs: int) -> int | None:
        if not self._graphs or not decode_only:
            return None
        for size in self._graph_sizes:
            if size >= num_seqs:
                return size
        return None

    @torch.inference_mode()
    def _capture_decode_graphs(self) -> None:
        self._graph_sizes = decode_graph_sizes(self.max_num_seqs)
        largest = self._graph_sizes[-1]
        self._graph_logits = torch.zeros(
            (largest, self.vocab_size), dtype=torch.float32, device=self.device
        )
        # Harmless inputs for capture: every row is a one-token context with no KV write.
        self._input_ids.zero_()
        self._positions.zero_()
        self._slot_mapping.fill_(-1)
        self._seq_lens.fill_(1)
        self._block_tables.zero_()
        self._query_start_loc.copy_(torch.arange(self.max_num_seqs + 1, dtype=torch.int32))
        pool = self._graph_pool = torch.cuda.graph_pool_handle()
        for size in reversed(self._graph_sizes):  # largest first: smaller ones reuse its pool
            metadata = self._buffer_metadata(size, size, 1, self.max_model_len, True)
            with self.model.forward_context.use(metadata):
                self._graph_step(size)  # warm-up (Triton autotuning, allocator)
                torch.cuda.synchronize(self.device)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    self._graph_step(size)
            self._graphs[size] = graph
        torch.cuda.synchronize(self.device)

    def _graph_step(self, size: int) -> None:
        hidden = self.model(self._input_ids[:size], self._positions[:size])
        self._graph_logits[:size].copy_(self.model.compute_logits(hidden))

    def _prefill_graph_size(self, inputs: StepInputs) -> int | None:
        """Smallest prefill graph that holds the step: its tokens, its sequences, and (when
        there are padding tokens) a free sequence slot for the padding sequence."""
        if not self._prefill_graphs or inputs.max_query_len == 1:
            return None
        num_tokens, num_seqs = len(inputs.input_ids), len(inputs.seq_lens)
        for size in self._prefill_sizes:
            slots = min(size, self.max_num_seqs)
            if size >= num_tokens and (size == num_tokens or num_seqs < slots):
                return size
        return None

    @torch.inference_mode()
    def _capture_prefill_graphs(self, limit: int) -> None:
        """Graphs of the model body for 16, 32, ... tokens and min(tokens, max_num_seqs)
        sequence slots. Attention grids depend only on those two counts (the prefill kernel
        finds each program's sequence on the device), so one graph serves any split of its
        tokens into sequences; the output is the hidden states, and the lm_head runs eagerly
        on the rows asked for."""
        self._prefill_sizes = prefill_graph_sizes(limit, self.max_num_tokens, self.max_model_len)
        if not self._prefill_sizes:
            return
        largest = self._prefill_sizes[-1]
        self._prefill_hidden = torch.zeros(
            (largest, self.hidden_size), dtype=self.dtype, device=self.device
        )
        pool = self._graph_pool
        for size in reversed(self._prefill_sizes):
            slots = min(size, self.max_num_seqs)
            # Harmless capture inputs: sequence 0 holds every token, no KV write, block 0.
            self._input_ids[:size].zero_()
            self._positions[:size].zero_()
            self._slot_mapping[:size].fill_(-1)
            self._seq_lens[:slots].zero_()
            self._seq_lens[0] = size
            self._query_start_loc[: slots + 1].fill_(size)
            self._query_start_loc[0] = 0
            self._block_tables[:slots].zero_()
            metadata = self._buffer_metadata(size, slots, size, self.max_model_len, False)
            with self.model.forward_context.use(metadata):
                self._prefill_graph_step(size)  # warm-up (Triton compilation, allocator)
                torch.cuda.synchronize(self.device)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    self._prefill_graph_step(size)
            self._prefill_graphs[size] = graph
        torch.cuda.synchronize(self.device)

    def _prefill_graph_step(self, size: int) -> None:
        hidden = self.model(self._input_ids[:size], self._positions[:size])
        self._prefill_hidden[:size].copy_(hidden)


def _speculation_holds(speculation: DecodeSpeculation, slices: list[SequenceSlice]) -> bool:
    """Whether `slices` are exactly the step `speculation` staged (C-speed list compares)."""
    tables = speculation.tables
    return (
        len(slices) == len(tables)
        and all(map(operator.is_, [s.block_table for s in slices], tables))
        and [s.num_computed_tokens for s in slices] == speculation.computed
        and [len(t) for t in tables] == speculation.table_lens
        and all(len(s.token_ids) == 1 and s.logits == LogitsWanted.LAST for s in slices)
    )


def _logits_indices(slices: list[SequenceSlice], query_start_loc: np.ndarray) -> np.ndarray:
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
