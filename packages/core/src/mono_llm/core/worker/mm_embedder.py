"""Input embeddings of a step that feeds multimodal placeholder tokens.

The rows of placeholder tokens get their items' encoder outputs as the slices'
`embeds_overrides` (the runner embeds the other tokens from the token table). Items a step
needs and the encoder cache lacks run through the model's `embed_multimodal` in one batch (each item once, however many
sequences or chunks share it); a chunk that covers only part of an item's span copies only
those rows, and the next chunk finds the rest in the cache. An item is released from the
cache once the slice that computes the last row of its span has run.
"""

from __future__ import annotations

import torch
from torch import nn

from mono_llm.core.multimodal.encoder_cache import EncoderCache
from mono_llm.core.multimodal.inputs import MultiModalItem
from mono_llm.core.worker.batch import EmbedsOverride, SequenceSlice


class MultiModalEmbedder:
    """Turns a step's media spans into embedding overrides; owns the encoder-output cache."""

    def __init__(self, model: nn.Module, cache: EncoderCache) -> None:
        self.model = model
        self.cache = cache

    @staticmethod
    def needed(slices: list[SequenceSlice]) -> bool:
        return any(s.mm_items and s.has_mm_input for s in slices)

    def fill_overrides(self, slices: list[SequenceSlice]) -> None:
        """Give each slice that feeds placeholder tokens the encoder rows of those tokens
        (`embeds_overrides`, offsets within the slice)."""
        # (slice, item) for every item overlapping a slice of this step
        uses = [
            (s, item)
            for s in slices
            for item in s.mm_items
            if item.overlaps(s.num_computed_tokens, s.seq_len)
        ]
        if not uses:
            return
        outputs = self._encoder_outputs([(s.request_id, item) for s, item in uses])
        for s, item in uses:
            start, stop = s.num_computed_tokens, s.seq_len
            first, last = max(start, item.offset), min(stop, item.end)
            rows = outputs[item.content_hash][first - item.offset : last - item.offset]
            override = EmbedsOverride(offset=first - start, embeds=rows)
            s.embeds_overrides = [*(s.embeds_overrides or ()), override]
            if stop >= item.end:  # the span's last row is computed in this step
                self.cache.release(s.request_id, item.content_hash)

    def release(self, request_id: str) -> None:
        """Drop the request's holds (it finished, was aborted or failed)."""
        self.cache.release(request_id)

    def _encoder_outputs(self, needs: list[tuple[str, MultiModalItem]]) -> dict[str, torch.Tensor]:
        outputs: dict[str, torch.Tensor] = {}
        missing: dict[str, tuple[str, MultiModalItem]] = {}
        for request_id, item in needs:
            digest = item.content_hash
            if digest in missing:
                continue
            cached = self.cache.get(digest, request_id)
            if cached is not None:
                outputs[digest] = cached
            else:
                missing[digest] = (request_id, item)
        if missing:
            pending = list(missing.values())
            encoded = self.model.embed_multimodal([item for _, item in pending])
            for (request_id, item), output in zip(pending, encoded, strict=True):
                self.cache.put(item.content_hash, output, request_id)
                outputs[item.content_hash] = output
        # Every request of this step that uses an item holds it (also those sharing an item
        # another request found or encoded).
        for request_id, item in needs:
            self.cache.hold(item.content_hash, request_id)
        return outputs
