"""The part of the engine's model interface that a text-only decoder spells the same way
whatever its architecture: sizes read from its settings, and `forward` from token ids or
from input embeddings. A model derives from `TextDecoderLM` and supplies `settings` (with
`vocab_size` and `hidden_size`), `embed_input_ids` and `decode`; the rest of `EngineModel`
(models/interface.py) stays its own."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class TextDecoderLM(nn.Module):
    settings: Any  # a dataclass with vocab_size and hidden_size

    @property
    def vocab_size(self) -> int:
        return self.settings.vocab_size

    @property
    def hidden_size(self) -> int:
        return self.settings.hidden_size

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [num_tokens] -> [num_tokens, hidden]."""
        raise NotImplementedError

    def decode(self, inputs_embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """inputs_embeds [num_tokens, hidden], positions [num_tokens] -> final hidden states."""
        raise NotImplementedError

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids (or inputs_embeds [num_tokens, hidden]), positions [num_tokens] ->
        final hidden states [num_tokens, hidden]: the embeddings path is the ids path with
        the lookup done by the caller."""
        if inputs_embeds is None:
            assert input_ids is not None
            inputs_embeds = self.embed_input_ids(input_ids)
        return self.decode(inputs_embeds, positions)
