"""One engine step's work as the model runner sees it: a ragged batch of sequence slices.

The scheduler decides, per running sequence, which tokens to feed this step (a prefill chunk,
or the single newest token of a decode) and which logits it needs back; the runner flattens
the slices into one padded-nowhere batch, runs the model and returns exactly those rows.
This is the only contract between the scheduling side and the model side of the engine.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence as Sequence_
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from mono_llm.core.multimodal.inputs import MultiModalItem


class LogitsWanted(enum.IntEnum):
    NONE = 0  # a prefill chunk that is not the last one: nothing to sample yet
    LAST = 1  # sample the next token from the slice's last position
    ALL = 2  # every position (prompt logprobs); the last row is also the one sampled from


@dataclass(slots=True)
class EmbedsOverride:
    """Rows of a slice whose input embeddings do not come from the token table.

    The seam for multimodal and similar inputs: the runner embeds the slice's token ids,
    then writes `embeds` over the rows starting at `offset` (e.g. an image's placeholder
    tokens get the vision encoder's output) before the model's first layer.
    """

    offset: int  # first row, counted within the slice's token_ids
    embeds: torch.Tensor  # [num_rows, hidden], model dtype, on the runner's device


@dataclass(slots=True)
class SequenceSlice:
    """The tokens of one sequence that run in this step."""

    token_ids: list[int]
    # Tokens of this sequence already in the KV cache; this slice's positions start here.
    num_computed_tokens: int
    # Physical KV block ids covering positions [0, num_computed_tokens + len(token_ids)).
    block_table: list[int]
    logits: LogitsWanted = LogitsWanted.LAST
    # Input embeddings to use instead of the token table's rows (None: plain token ids).
    embeds_overrides: list[EmbedsOverride] | None = None
    # Multimodal prompts: the owning request (holds encoder outputs) and the sequence's
    # items; the runner turns those whose placeholder span overlaps this slice into
    # `embeds_overrides` (worker/mm_embedder.py).
    request_id: str = ""
    mm_items: Sequence_[MultiModalItem] = ()
    # M-RoPE models: the prompt's 3-D positions [3, prompt_len] (None for a text-only
    # prompt) and the offset of positions past the prompt (layers/mrope.py).
    mrope_positions: Any = None
    mrope_delta: int = 0
    # Encoder–decoder models: the key of this sequence's encoder output in the runner, and
    # its encoder input (e.g. log-mel features), encoded when the key is not there yet.
    encoder_key: str | None = None
    encoder_features: torch.Tensor | None = None

    @property
    def has_mm_input(self) -> bool:
        """Whether some item's placeholder span overlaps this slice's tokens."""
        start, stop = self.num_computed_tokens, self.num_computed_tokens + len(self.token_ids)
        return any(item.overlaps(start, stop) for item in self.mm_items)

    @property
    def needs_mrope_positions(self) -> bool:
        """Whether this slice runs prompt tokens of a prompt with M-RoPE positions."""
        table = self.mrope_positions
        return table is not None and self.num_computed_tokens < table.shape[1]

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def seq_len(self) -> int:
        """Context length after this step (cached tokens plus this slice)."""
        return self.num_computed_tokens + len(self.token_ids)


@dataclass(slots=True)
class ModelBatch:
    """All slices of a step, in the order whose logits rows the runner returns."""

    slices: list[SequenceSlice] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.slices)

    @property
    def is_decode_only(self) -> bool:
        return all(s.num_tokens == 1 for s in self.slices)

    def logits_row_counts(self) -> list[int]:
        """Rows each slice contributes to the runner's output, in order."""
        return [
            0
            if s.logits == LogitsWanted.NONE
            else (1 if s.logits == LogitsWanted.LAST else s.num_tokens)
            for s in self.slices
        ]
