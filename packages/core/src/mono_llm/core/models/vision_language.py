"""The part every vision-language model shares: a registered decoder that does all the text work.

LLaVA and Qwen2-VL are a vision encoder in front of a decoder-only LM (models/llama.py). The
engine talks to them as to that decoder — same forward context, KV-cache layers, rope tables,
embeddings, forward pass and logits — plus `embed_multimodal` for the images. This base class
forwards the decoder half of the engine interface to `language_model`, and loads checkpoints
the same way for both: the decoder's tensors go through the decoder's own `WeightNaming` and
`load_weights` (which fuse q/k/v and gate/up), everything else is copied by name. A subclass
builds its vision modules and says how its checkpoint names map (`_module_name`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from mono_llm.core.layers.attention import ForwardContext, PagedAttention
from mono_llm.core.layers.rotary import RotaryEmbedding
from mono_llm.core.models.registry import WeightNaming
from mono_llm.core.models.weight_loading import checkpoint_param, copy_checkpoint_tensor

_DECODER_PREFIX = "language_model."


class VisionLanguageModel(nn.Module):
    """A vision encoder (the subclass's) + `language_model`, a registered decoder."""

    def __init__(self, language_model: nn.Module) -> None:
        super().__init__()
        self.language_model = language_model
        # How the decoder's own checkpoint names map (its registry spec), applied to the
        # names under `language_model.`.
        self.decoder_naming = WeightNaming()

    # ------------------------------------------------------------------ engine interface
    @property
    def forward_context(self) -> ForwardContext:
        return self.language_model.forward_context

    @property
    def vocab_size(self) -> int:
        return self.language_model.vocab_size

    @property
    def hidden_size(self) -> int:
        return self.language_model.hidden_size

    def tie_weights(self) -> None:
        self.language_model.tie_weights()

    def attention_layers(self) -> list[PagedAttention]:
        return self.language_model.attention_layers()

    def rotary_embeddings(self) -> list[RotaryEmbedding]:
        return self.language_model.rotary_embeddings()

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.language_model.embed_input_ids(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden states [num_tokens, hidden] from token ids or merged embeddings."""
        return self.language_model(input_ids, positions, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.language_model.compute_logits(hidden)

    # ------------------------------------------------------------------ weights
    def _module_name(self, name: str) -> str | None:
        """A checkpoint tensor's name in this module tree (`language_model.*` for the
        decoder's, in the decoder's checkpoint naming), or None to skip the tensor."""
        raise NotImplementedError

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        decoder: list[tuple[str, torch.Tensor]] = []
        for checkpoint_name, tensor in weights:
            name = self._module_name(checkpoint_name)
            if name is None:
                continue
            if name.startswith(_DECODER_PREFIX):
                mapped = self.decoder_naming.map(name.removeprefix(_DECODER_PREFIX))
                if mapped is not None:
                    decoder.append((mapped, tensor))
                continue
            copy_checkpoint_tensor(checkpoint_param(params, name), name, tensor)
            loaded.add(name)
        loaded.update(_DECODER_PREFIX + n for n in self.language_model.load_weights(decoder))
        return loaded

    def expected_weights(self) -> set[str]:
        expected = {_DECODER_PREFIX + n for n in self.language_model.expected_weights()}
        expected.update(n for n, _ in self.named_parameters() if not n.startswith(_DECODER_PREFIX))
        return expected
