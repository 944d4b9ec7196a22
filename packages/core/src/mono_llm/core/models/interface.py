"""The interface every model class offers the engine (structural: no base class to inherit).

The runner, the loader and the pooling heads talk to a model only through these methods, so
a new architecture is one module that implements them plus one `ModelSpec` in the registry.
Shapes are those of the engine's ragged batch: all of a step's tokens concatenated, no
padding (`num_tokens` rows).

Optional capabilities are separate protocols, checked with `isinstance` (they are
`runtime_checkable`): `SupportsMultiModal` for models that accept images or audio mixed into
the prompt, `SupportsEncoderDecoder` for models whose decoder attends to an encoder's output.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from mono_llm.core.layers.attention import ForwardContext, PagedAttention
    from mono_llm.core.layers.rotary import RotaryEmbedding


@runtime_checkable
class EngineModel(Protocol):
    """What the engine needs of any model (decoder, encoder or encoder–decoder)."""

    @property
    def forward_context(self) -> ForwardContext:
        """The per-instance context the runner installs each step's attention metadata in."""
        ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def hidden_size(self) -> int: ...

    @classmethod
    def from_hf_config(
        cls, config: dict[str, Any], architecture: str, max_model_len: int | None = None
    ) -> EngineModel:
        """Build on the current default device and dtype (the loader uses `meta`) from the
        part of config.json the spec's `config_view` names."""
        ...

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [num_tokens] -> input embeddings [num_tokens, hidden], exactly what
        `forward(input_ids, ...)` would feed its first layer."""
        ...

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden states [num_tokens, hidden] from token ids [num_tokens] or, when
        `inputs_embeds` [num_tokens, hidden] is given, from those (input_ids is then ignored
        and may be None). positions [num_tokens] int64. Attention metadata is read from
        `forward_context`. Callers pass `inputs_embeds` by keyword: a model may take extra
        optional arguments of its own (BERT: seq_lens, token_type_ids) before it."""
        ...

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[rows, hidden] -> float32 [rows, vocab] (a pooling model's head output instead)."""
        ...

    def attention_layers(self) -> list[PagedAttention]:
        """The layers that own paged KV cache; empty for a model without a KV cache."""
        ...

    def rotary_embeddings(self) -> list[RotaryEmbedding]:
        """Rope tables to rebuild on the target device after meta-device construction."""
        ...

    def tie_weights(self) -> None:
        """Share tensors the config ties (again after `to_empty`)."""
        ...

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Copy (model-side name, tensor) pairs in (names already mapped by the spec's
        `WeightNaming`); returns the names loaded, comparable with `expected_weights`."""
        ...

    def expected_weights(self) -> set[str]:
        """What `load_weights` returns once a complete checkpoint has been read."""
        ...


@runtime_checkable
class SupportsMultiModal(Protocol):
    """A model that turns preprocessed non-text items into prompt embeddings.

    The runner embeds the prompt's token ids with `embed_input_ids` and overwrites each
    item's placeholder rows with the rows `embed_multimodal` returned for it, then calls
    `forward(None, positions, inputs_embeds=...)`.
    """

    def embed_multimodal(self, items: Sequence[Any]) -> list[torch.Tensor]:
        """One embeddings tensor [num_placeholder_tokens, hidden] per item, in order. Each
        item carries its modality and preprocessed tensors (pixel values, mel features)."""
        ...


@runtime_checkable
class SupportsEncoderDecoder(Protocol):
    """A model whose decoder cross-attends to the output of an encoder (Whisper).

    The encoder runs once per request; its output (or the cross-attention keys/values the
    model derives from it) lives for the request's life and is freed on finish, abort or
    preemption. The decoder runs through `forward` like any decoder, reading the current
    step's cross-attention inputs from its `forward_context`.
    """

    def encode(self, encoder_inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """One encoder output [encoder_len, hidden] per request's preprocessed encoder input
        (e.g. log-mel features [n_mels, frames])."""
        ...
