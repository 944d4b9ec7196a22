"""The runner's side of encoder–decoder models: encoder outputs kept per sequence.

A sequence seen for the first time (or again after a preemption freed its entry) is encoded
in the step that first schedules it, all such sequences of the step in one encoder batch;
the model turns each encoder output into what its decoder reads (Whisper: every layer's
cross-attention keys and values), written into a slot of the `CrossKVPool` until the engine
frees it. Each step then builds the block tables of its slices' slots: the model's
cross-attention reads the pool in place.

The pool has one slot per sequence that may run at once. Its size comes out of a budget
(1 GiB on CPU, a fifth of the usable GPU memory), and when fewer slots fit than
`max_num_seqs` the scheduler's `max_num_seqs` is lowered to the slot count, so admitted
sequences always find a slot.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from mono_llm.core.config import EngineConfig
from mono_llm.core.errors import EngineError
from mono_llm.core.layers.cross_attention import CrossAttentionMetadata, CrossKVPool
from mono_llm.core.models.interface import SupportsEncoderDecoder
from mono_llm.core.worker.batch import SequenceSlice

logger = logging.getLogger(__name__)

_CPU_BUDGET_BYTES = 1024**3
_GPU_BUDGET_FRACTION = 0.2


class EncoderOutputs:
    """Per-sequence encoder outputs of one encoder–decoder model."""

    def __init__(
        self,
        model: SupportsEncoderDecoder,
        config: EngineConfig,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.model = model
        self.device = device
        self.dtype = dtype
        layers, heads, head_dim, encoder_len = model.cross_attention_shape  # type: ignore[attr-defined]
        block_size = config.cache_config.block_size
        per_slot = CrossKVPool.bytes_per_slot(
            layers, heads, head_dim, encoder_len, block_size, dtype
        )
        if device.type == "cuda":
            total = torch.cuda.get_device_properties(device).total_memory
            budget = int(total * config.cache_config.gpu_memory_utilization * _GPU_BUDGET_FRACTION)
        else:
            budget = _CPU_BUDGET_BYTES
        scheduler = config.scheduler_config
        slots = min(scheduler.max_num_seqs, max(1, budget // per_slot))
        if slots < scheduler.max_num_seqs:
            logger.warning(
                "encoder outputs for %d sequences fit (%.2f GiB each): max_num_seqs %d -> %d",
                slots,
                per_slot / 1024**3,
                scheduler.max_num_seqs,
                slots,
            )
            scheduler.max_num_seqs = slots
        self.pool = CrossKVPool(
            num_layers=layers,
            num_heads=heads,
            head_dim=head_dim,
            encoder_len=encoder_len,
            block_size=block_size,
            num_slots=slots,
            dtype=dtype,
            device=device,
        )
        logger.info("cross-attention pool: %d slots, %.2f GiB", slots, slots * per_slot / 1024**3)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One request's encoder input shape (Whisper: (n_mels, 3000))."""
        return tuple(self.model.encoder_input_shape)  # type: ignore[attr-defined]

    @property
    def num_positions(self) -> int:
        """Encoder positions of one request: its encoder's cost in a step's token budget."""
        return self.pool.encoder_len

    def free(self, key: str) -> None:
        self.pool.free(key)

    def step_metadata(self, slices: list[SequenceSlice]) -> CrossAttentionMetadata:
        """Encode the slices seen for the first time, then point every slice at its slot."""
        missing = [s for s in slices if s.encoder_key not in self.pool]
        if missing:
            if any(s.encoder_key is None or s.encoder_features is None for s in missing):
                raise EngineError("an encoder–decoder step has a sequence without encoder input")
            encoded = self.model.encode(
                [torch.as_tensor(s.encoder_features).to(self.device, self.dtype) for s in missing]
            )
            for s, entry in zip(missing, encoded, strict=True):
                self.pool.put(s.encoder_key, entry)  # type: ignore[arg-type]
        tables = [self.pool.block_table(s.encoder_key) for s in slices]  # type: ignore[arg-type]
        return self._metadata(slices, tables)

    def profile_metadata(self, slices: list[SequenceSlice], budget: int) -> CrossAttentionMetadata:
        """Metadata for the memory profile's largest step: a budget's worth of silent
        requests encoded at once (the encoder's peak), every slice reading the first."""
        count = max(1, min(budget // max(1, self.num_positions), self.pool.num_slots))
        silent = torch.zeros((count, *self.input_shape), dtype=self.dtype, device=self.device)
        encoded = self.model.encode(list(silent))
        del silent, encoded
        table = range(self.pool.blocks_per_seq)  # slot 0, zeros
        return self._metadata(slices, [table] * len(slices))

    def _metadata(self, slices: list[SequenceSlice], tables: list[range]) -> CrossAttentionMetadata:
        num_seqs = len(slices)
        query_lens = np.fromiter((len(s.token_ids) for s in slices), np.int32, num_seqs)
        query_start_loc = np.zeros(num_seqs + 1, np.int32)
        np.cumsum(query_lens, out=query_start_loc[1:])
        block_tables = np.asarray([[t.start] for t in tables], np.int32) + np.arange(
            self.pool.blocks_per_seq, dtype=np.int32
        )
        seq_lens = np.full(num_seqs, self.pool.encoder_len, np.int32)
        tensor = self.pool.tensor

        def device(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(array).to(self.device, non_blocking=True)

        return CrossAttentionMetadata(
            key_caches=list(tensor[:, 0].unbind(0)),
            value_caches=list(tensor[:, 1].unbind(0)),
            block_tables=device(block_tables),
            query_start_loc=device(query_start_loc),
            seq_lens=device(seq_lens),
            max_query_len=int(query_lens.max()),
            encoder_len=self.pool.encoder_len,
        )
