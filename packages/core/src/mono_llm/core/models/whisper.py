"""Whisper (encoder–decoder speech recognition), config-driven for every published size.

tiny … large-v3 and large-v3-turbo differ only in config.json: widths, layer counts, 80 or
128 mel bins, and (turbo) a 4-layer decoder under a 32-layer encoder; `.en` checkpoints differ
in vocabulary only. Module and parameter names follow transformers'
`WhisperForConditionalGeneration`, so checkpoints load by name.

How it runs in the engine:
- `encode(features)` runs the audio encoder once per request on its log-mel features
  ([batch, num_mel_bins, 3000], computed outside the core) and returns every decoder layer's
  cross-attention keys/values for it; the runner keeps them for the request's life.
- `forward(input_ids, positions)` is the decoder over a ragged batch, like a decoder-only
  model: self-attention on the paged KV cache (`ForwardContext`), cross-attention over the
  step's gathered encoder keys/values (`CrossAttentionContext`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mono_llm.core.errors import UnsupportedModelError
from mono_llm.core.layers.attention import ForwardContext, PagedAttention
from mono_llm.core.layers.cross_attention import CrossAttentionContext, cross_attention
from mono_llm.core.models.weight_loading import checkpoint_param, copy_checkpoint_tensor

_ACTIVATIONS = {"gelu": F.gelu, "gelu_new": lambda x: F.gelu(x, approximate="tanh"), "relu": F.relu}
# Buffers or unused heads some exports carry next to the weights.
_SKIPPED_PREFIXES = ("model.encoder.embed_positions._float_tensor",)


@dataclass(slots=True)
class WhisperSettings:
    """The config.json fields the model reads."""

    vocab_size: int
    d_model: int
    num_mel_bins: int
    encoder_layers: int
    encoder_attention_heads: int
    encoder_ffn_dim: int
    decoder_layers: int
    decoder_attention_heads: int
    decoder_ffn_dim: int
    max_source_positions: int
    max_target_positions: int
    activation: str
    scale_embedding: bool

    def __post_init__(self) -> None:
        for heads in (self.encoder_attention_heads, self.decoder_attention_heads):
            if self.d_model % heads:
                raise UnsupportedModelError(f"d_model={self.d_model} is not divisible by {heads}")
        if self.activation not in _ACTIVATIONS:
            raise UnsupportedModelError(f"Whisper activation {self.activation!r} is not supported")

    @classmethod
    def from_hf(cls, config: dict[str, Any]) -> WhisperSettings:
        try:
            return cls(
                vocab_size=config["vocab_size"],
                d_model=config["d_model"],
                num_mel_bins=config.get("num_mel_bins", 80),
                encoder_layers=config["encoder_layers"],
                encoder_attention_heads=config["encoder_attention_heads"],
                encoder_ffn_dim=config["encoder_ffn_dim"],
                decoder_layers=config["decoder_layers"],
                decoder_attention_heads=config["decoder_attention_heads"],
                decoder_ffn_dim=config["decoder_ffn_dim"],
                max_source_positions=config.get("max_source_positions", 1500),
                max_target_positions=config.get("max_target_positions", 448),
                activation=config.get("activation_function", "gelu"),
                scale_embedding=bool(config.get("scale_embedding", False)),
            )
        except KeyError as exc:
            raise UnsupportedModelError(f"Whisper config.json lacks {exc.args[0]!r}") from exc

    @property
    def num_frames(self) -> int:
        """Mel frames the encoder takes: two per encoder position (conv2 has stride 2)."""
        return 2 * self.max_source_positions


class _Projections(nn.Module):
    """q/k/v/out projections named as HF's WhisperAttention (k_proj has no bias)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)


class _EncoderLayer(nn.Module):
    def __init__(self, s: WhisperSettings) -> None:
        super().__init__()
        self.num_heads = s.encoder_attention_heads
        self.self_attn = _Projections(s.d_model)
        self.self_attn_layer_norm = nn.LayerNorm(s.d_model)
        self.fc1 = nn.Linear(s.d_model, s.encoder_ffn_dim)
        self.fc2 = nn.Linear(s.encoder_ffn_dim, s.d_model)
        self.final_layer_norm = nn.LayerNorm(s.d_model)
        self.act = _ACTIVATIONS[s.activation]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [batch, frames, d_model] -> same shape."""
        batch, frames, d_model = hidden.shape
        heads = self.num_heads
        x = self.self_attn_layer_norm(hidden)
        attn = self.self_attn

        def split(t: torch.Tensor) -> torch.Tensor:  # [batch, heads, frames, head_dim]
            return t.view(batch, frames, heads, d_model // heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            split(attn.q_proj(x)), split(attn.k_proj(x)), split(attn.v_proj(x))
        )
        hidden = hidden + attn.out_proj(out.transpose(1, 2).reshape(batch, frames, d_model))
        x = self.final_layer_norm(hidden)
        return hidden + self.fc2(self.act(self.fc1(x)))


class WhisperEncoder(nn.Module):
    """Two convolutions (the second halves the frame rate), sinusoidal positions, layers."""

    def __init__(self, s: WhisperSettings) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(s.num_mel_bins, s.d_model, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(s.d_model, s.d_model, kernel_size=3, stride=2, padding=1)
        self.embed_positions = nn.Embedding(s.max_source_positions, s.d_model)
        self.layers = nn.ModuleList(_EncoderLayer(s) for _ in range(s.encoder_layers))
        self.layer_norm = nn.LayerNorm(s.d_model)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [batch, num_mel_bins, frames] -> [batch, frames // 2, d_model]."""
        hidden = F.gelu(self.conv1(features))
        hidden = F.gelu(self.conv2(hidden)).transpose(1, 2)
        hidden = hidden + self.embed_positions.weight[: hidden.shape[1]]
        for layer in self.layers:
            hidden = layer(hidden)
        return self.layer_norm(hidden)


class _DecoderLayer(nn.Module):
    def __init__(
        self, s: WhisperSettings, index: int, context: ForwardContext, cross: CrossAttentionContext
    ) -> None:
        super().__init__()
        self.index = index
        self.num_heads = s.decoder_attention_heads
        self.head_dim = s.d_model // self.num_heads
        self.scale = self.head_dim**-0.5
        self._cross = (cross,)  # a tuple keeps the shared context out of nn.Module attributes
        self.self_attn = _Projections(s.d_model)
        self.self_attn.attn = PagedAttention(
            self.num_heads, self.num_heads, self.head_dim, self.scale, context
        )
        self.self_attn_layer_norm = nn.LayerNorm(s.d_model)
        self.encoder_attn = _Projections(s.d_model)
        self.encoder_attn_layer_norm = nn.LayerNorm(s.d_model)
        self.fc1 = nn.Linear(s.d_model, s.decoder_ffn_dim)
        self.fc2 = nn.Linear(s.decoder_ffn_dim, s.d_model)
        self.final_layer_norm = nn.LayerNorm(s.d_model)
        self.act = _ACTIVATIONS[s.activation]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [num_tokens, d_model] -> same shape."""
        shape = (hidden.shape[0], self.num_heads, self.head_dim)
        attn = self.self_attn
        x = self.self_attn_layer_norm(hidden)
        out = attn.attn(
            attn.q_proj(x).view(shape), attn.k_proj(x).view(shape), attn.v_proj(x).view(shape)
        )
        hidden = hidden + attn.out_proj(out.reshape(hidden.shape))
        x = self.encoder_attn_layer_norm(hidden)
        cross = self.encoder_attn
        out = cross_attention(
            cross.q_proj(x).view(shape), self.index, self._cross[0].metadata, self.scale
        )
        hidden = hidden + cross.out_proj(out.reshape(hidden.shape))
        x = self.final_layer_norm(hidden)
        return hidden + self.fc2(self.act(self.fc1(x)))


class WhisperDecoder(nn.Module):
    def __init__(self, s: WhisperSettings) -> None:
        super().__init__()
        self.forward_context = ForwardContext()
        self.cross_context = CrossAttentionContext()
        self.embed_scale = s.d_model**0.5 if s.scale_embedding else 1.0
        self.embed_tokens = nn.Embedding(s.vocab_size, s.d_model)
        self.embed_positions = nn.Embedding(s.max_target_positions, s.d_model)
        self.layers = nn.ModuleList(
            _DecoderLayer(s, i, self.forward_context, self.cross_context)
            for i in range(s.decoder_layers)
        )
        self.layer_norm = nn.LayerNorm(s.d_model)

    def forward(self, inputs_embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden = inputs_embeds + self.embed_positions(positions)
        for layer in self.layers:
            hidden = layer(hidden)
        return self.layer_norm(hidden)


class _WhisperModel(nn.Module):
    def __init__(self, s: WhisperSettings) -> None:
        super().__init__()
        self.encoder = WhisperEncoder(s)
        self.decoder = WhisperDecoder(s)


class WhisperForConditionalGeneration(nn.Module):
    """Whisper: `encode` once per request, then `forward` decodes on the paged cache."""

    is_encoder_decoder = True

    def __init__(self, settings: WhisperSettings) -> None:
        super().__init__()
        self.settings = settings
        self.model = _WhisperModel(settings)
        self.proj_out = nn.Linear(settings.d_model, settings.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """The output projection is the token embedding (every Whisper checkpoint ties them)."""
        self.proj_out.weight = self.model.decoder.embed_tokens.weight

    @classmethod
    def from_hf_config(
        cls, config: dict[str, Any], architecture: str, max_model_len: int | None = None
    ) -> WhisperForConditionalGeneration:
        return cls(WhisperSettings.from_hf(config))

    @property
    def forward_context(self) -> ForwardContext:
        return self.model.decoder.forward_context

    @property
    def cross_context(self) -> CrossAttentionContext:
        return self.model.decoder.cross_context

    @property
    def vocab_size(self) -> int:
        return self.settings.vocab_size

    @property
    def hidden_size(self) -> int:
        return self.settings.d_model

    @property
    def num_encoder_positions(self) -> int:
        """Encoder output length of one request (1500 for 30 s): its cost in the step budget."""
        return self.settings.max_source_positions

    @property
    def encoder_input_shape(self) -> tuple[int, int]:
        """One request's log-mel features: (num_mel_bins, 3000 frames of 10 ms)."""
        return (self.settings.num_mel_bins, self.settings.num_frames)

    def encode(self, encoder_inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Log-mel features [num_mel_bins, frames] per request -> the cross-attention keys and
        values its decoder layers read, [decoder_layers, 2, frames // 2, heads, head_dim]
        each (the paged cache's layout): computed once here instead of at every step."""
        s = self.settings
        for features in encoder_inputs:
            if features.shape != (s.num_mel_bins, s.num_frames):
                raise ValueError(
                    f"Whisper features must be [{s.num_mel_bins}, {s.num_frames}], got "
                    f"{list(features.shape)}"
                )
        encoded = self.model.encoder(torch.stack(list(encoder_inputs)))  # [batch, pos, d_model]
        batch, positions, _ = encoded.shape
        heads = s.decoder_attention_heads
        per_layer = []
        for layer in self.model.decoder.layers:
            cross = layer.encoder_attn
            key = cross.k_proj(encoded).view(batch, positions, heads, -1)
            value = cross.v_proj(encoded).view(batch, positions, heads, -1)
            per_layer.append(torch.stack((key, value), dim=1))  # [batch, 2, pos, heads, hd]
        return list(torch.stack(per_layer, dim=1).unbind(0))

    @property
    def cross_attention_shape(self) -> tuple[int, int, int, int]:
        """(decoder layers, heads, head_dim, encoder positions) of one request's entry."""
        s = self.settings
        heads = s.decoder_attention_heads
        return (s.decoder_layers, heads, s.d_model // heads, s.max_source_positions)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        decoder = self.model.decoder
        return decoder.embed_tokens(input_ids) * decoder.embed_scale

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids (or inputs_embeds), positions [num_tokens] -> decoder hidden states
        [num_tokens, d_model]."""
        if inputs_embeds is None:
            assert input_ids is not None
            inputs_embeds = self.embed_input_ids(input_ids)
        return self.model.decoder(inputs_embeds, positions)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj_out(hidden).float()

    def attention_layers(self) -> list[PagedAttention]:
        return [layer.self_attn.attn for layer in self.model.decoder.layers]

    def rotary_embeddings(self) -> list[Any]:
        return []

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Copy checkpoint tensors (HF names, with or without the `model.` wrapper) in."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            if name.startswith(_SKIPPED_PREFIXES) or name == "proj_out.weight":
                continue  # proj_out is tied to the token embedding
            if not name.startswith("model."):
                name = f"model.{name}"
            copy_checkpoint_tensor(checkpoint_param(params, name), name, tensor)
            loaded.add(name)
        return loaded

    def expected_weights(self) -> set[str]:
        return {name for name, _ in self.named_parameters() if name != "proj_out.weight"}
