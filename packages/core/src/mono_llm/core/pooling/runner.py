"""Model runner for encoder-only pooling models (BERT & co): the same ragged batches, no KV cache.

It flattens batches with the shared `prepare_step_inputs`, so the scheduler, its token budget
and block accounting work unchanged: the scheduler still hands out block ids, but for an
encoder they are only bookkeeping (no memory behind them), because every prompt runs whole in
one step and nothing is kept for later tokens.
"""

from __future__ import annotations

import numpy as np
import torch

from mono_llm.core.config import EngineConfig
from mono_llm.core.errors import EngineError
from mono_llm.core.layers.attention import AttentionMetadata
from mono_llm.core.worker.batch import ModelBatch
from mono_llm.core.worker.model_runner import RunnerBase, embed_with_overrides
from mono_llm.core.worker.step_inputs import prepare_step_inputs


class EncoderModelRunner(RunnerBase):
    """Runs encoder steps; `execute_hidden` returns every token's final hidden state."""

    def __init__(self, config: EngineConfig) -> None:
        super().__init__(config, label="encoder model")
        # Nominal blocks: enough for every sequence at full length, so block accounting never
        # limits an encoder; the token budget and max_num_seqs do.
        self.num_blocks = self.max_num_seqs * self.max_blocks_per_seq
        config.cache_config.num_blocks = self.num_blocks

    @property
    def kv_cache_bytes_per_block(self) -> int:
        return 0

    def execute(self, batch: ModelBatch) -> torch.Tensor:
        raise EngineError("an encoder model has no LM head: it serves pooling requests only")

    @torch.inference_mode()
    def execute_hidden(
        self, batch: ModelBatch, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final hidden states [batch.num_tokens, hidden]; every slice must be a whole prompt."""
        for s in batch.slices:
            if s.num_computed_tokens:
                raise EngineError("encoder slices must start at position 0 (no KV cache)")
        inputs = prepare_step_inputs(batch, self.block_size, self.max_num_tokens, self.max_num_seqs)
        device = self.device

        def to_device(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(array).to(device, non_blocking=True)

        metadata = AttentionMetadata(
            slot_mapping=to_device(inputs.slot_mapping),
            block_tables=to_device(inputs.block_tables),
            query_start_loc=to_device(inputs.query_start_loc),
            seq_lens=to_device(inputs.seq_lens),
            max_query_len=inputs.max_query_len,
            max_seq_len=inputs.max_seq_len,
            causal=False,
        )
        if token_type_ids is not None:
            token_type_ids = token_type_ids.to(device, non_blocking=True)
        input_ids = to_device(inputs.input_ids)
        embeds = None
        if inputs.embeds_overrides:
            embeds = embed_with_overrides(self.model, input_ids, inputs.embeds_overrides)
        with self.model.forward_context.use(metadata):
            return self.model(
                input_ids,
                to_device(inputs.positions),
                token_type_ids=token_type_ids,
                inputs_embeds=embeds,
            )
