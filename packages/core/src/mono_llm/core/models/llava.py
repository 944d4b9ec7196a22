"""LLaVA-1.5: a CLIP vision tower, a two-layer MLP projector and any registered decoder.

An image becomes `num_patches` (576 at 336 px / 14 px patches) embeddings: the tower's hidden
states at `vision_feature_layer` (the second-to-last by default; a list concatenates several
layers), without the class token under the "default" select strategy ("full" keeps it),
projected to the decoder's width. The engine puts them at the image's placeholder tokens and
runs the decoder on the merged embeddings; text-only steps run the decoder from token ids.

Checkpoints come in several namings (`language_model.model.*` or `model.language_model.*`,
`language_model.lm_head.*` or `lm_head.*`, `vision_tower.vision_model.*` or a bare
`vision_tower.*`, with or without a leading `model.`); all load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mono_llm.core.errors import InvalidRequestError, UnsupportedModelError
from mono_llm.core.models.clip import ClipVisionSettings, ClipVisionTower
from mono_llm.core.models.registry import resolve_spec
from mono_llm.core.models.vision_language import VisionLanguageModel
from mono_llm.core.multimodal.inputs import MultiModalItem

_DECODER_BY_MODEL_TYPE = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
}
_PROJECTOR_ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}


def decoder_architecture(text_config: dict[str, Any]) -> str:
    """The registered causal-LM architecture a multimodal model's text config describes."""
    named = text_config.get("architectures") or []
    if named:
        return str(named[0])
    model_type = text_config.get("model_type", "llama")
    arch = _DECODER_BY_MODEL_TYPE.get(model_type)
    if arch is None:
        raise UnsupportedModelError(f"text model_type {model_type!r} is not supported")
    return arch


@dataclass(slots=True)
class LlavaSettings:
    image_token_id: int
    feature_layers: list[int]  # non-negative indices into the tower's hidden states
    keep_class_token: bool  # select strategy "full"
    projector_act: str
    projector_bias: bool
    vision_hidden: int
    text_hidden: int

    @classmethod
    def from_hf(cls, config: dict[str, Any]) -> LlavaSettings:
        vision = config.get("vision_config") or {}
        text = config.get("text_config") or {}
        num_layers = int(vision.get("num_hidden_layers", 24))
        requested = config.get("vision_feature_layer", -2)
        layers = [requested] if isinstance(requested, int) else list(requested)
        # HF's hidden_states has num_layers + 1 entries (the embeddings first).
        resolved = [int(i) if i >= 0 else num_layers + 1 + int(i) for i in layers]
        if any(not 0 <= i <= num_layers for i in resolved):
            raise UnsupportedModelError(f"vision_feature_layer={requested!r} is out of range")
        strategy = config.get("vision_feature_select_strategy", "default")
        if strategy not in ("default", "full"):
            raise UnsupportedModelError(f"vision_feature_select_strategy={strategy!r}")
        act = config.get("projector_hidden_act", "gelu")
        if act not in _PROJECTOR_ACTIVATIONS:
            raise UnsupportedModelError(f"projector_hidden_act={act!r} is not supported")
        image_token = config.get("image_token_id", config.get("image_token_index"))
        if image_token is None:
            raise UnsupportedModelError("config.json names no image_token_id")
        return cls(
            image_token_id=int(image_token),
            feature_layers=resolved,
            keep_class_token=strategy == "full",
            projector_act=act,
            projector_bias=bool(config.get("multimodal_projector_bias", True)),
            vision_hidden=int(vision.get("hidden_size", 1024)),
            text_hidden=int(text.get("hidden_size", 4096)),
        )


class LlavaProjector(nn.Module):
    def __init__(self, s: LlavaSettings) -> None:
        super().__init__()
        width = s.vision_hidden * len(s.feature_layers)
        self.linear_1 = nn.Linear(width, s.text_hidden, bias=s.projector_bias)
        self.linear_2 = nn.Linear(s.text_hidden, s.text_hidden, bias=s.projector_bias)
        self._act = _PROJECTOR_ACTIVATIONS[s.projector_act]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self._act(self.linear_1(features)))


class LlavaForConditionalGeneration(VisionLanguageModel):
    """Vision tower + projector + decoder; the decoder keeps its own module (and KV cache)."""

    def __init__(
        self, settings: LlavaSettings, vision: ClipVisionSettings, language_model: nn.Module
    ) -> None:
        super().__init__(language_model)
        self.settings = settings
        self.vision_tower = ClipVisionTower(vision)
        self.multi_modal_projector = LlavaProjector(settings)

    @classmethod
    def from_hf_config(
        cls, config: dict[str, Any], architecture: str, max_model_len: int | None = None
    ) -> LlavaForConditionalGeneration:
        settings = LlavaSettings.from_hf(config)
        vision = ClipVisionSettings.from_hf(
            config.get("vision_config") or {}, max(settings.feature_layers)
        )
        text = config.get("text_config") or {}
        decoder = resolve_spec([decoder_architecture(text)])
        language_model = decoder.load_class().from_hf_config(
            text, decoder.settings_architecture, max_model_len
        )
        model = cls(settings, vision, language_model)
        model.decoder_naming = decoder.weights
        return model

    # ------------------------------------------------------------------ engine interface
    @property
    def image_token_id(self) -> int:
        return self.settings.image_token_id

    def check_multimodal_item(self, item: MultiModalItem) -> None:
        """Refuse, at admission, an image this tower cannot take (a step must never fail)."""
        size = self.vision_tower.settings.image_size
        pixels = item.data.get("pixel_values")
        if pixels is None or tuple(pixels.shape) != (3, size, size):
            shape = None if pixels is None else tuple(pixels.shape)
            raise InvalidRequestError(
                f"An image for this model must be pixel_values of shape (3, {size}, {size}); "
                f"got {shape}."
            )
        expected = self.vision_tower.settings.num_patches + int(self.settings.keep_class_token)
        if item.num_tokens != expected:
            raise InvalidRequestError(
                f"An image fills {expected} tokens in this model, not {item.num_tokens}."
            )

    def profile_items(self, num_tokens: int) -> list[MultiModalItem]:
        """Blank images filling about `num_tokens` placeholder tokens (at least one image),
        for the runner's memory profile."""
        size = self.vision_tower.settings.image_size
        per_image = self.vision_tower.settings.num_patches + int(self.settings.keep_class_token)
        device = self.multi_modal_projector.linear_1.weight.device
        pixels = torch.zeros(3, size, size, device=device)
        return [
            MultiModalItem("image", {"pixel_values": pixels}, per_image, content_hash="profile")
            for _ in range(max(1, num_tokens // per_image))
        ]

    def embed_multimodal(self, items: list[MultiModalItem]) -> list[torch.Tensor]:
        """Each image's embeddings [num_tokens, text hidden]; the images run as one batch."""
        dtype = self.multi_modal_projector.linear_1.weight.dtype
        device = self.multi_modal_projector.linear_1.weight.device
        pixels = torch.stack([item.data["pixel_values"] for item in items]).to(device, dtype)
        states = self.vision_tower(pixels, self.settings.feature_layers)
        if not self.settings.keep_class_token:
            states = [s[:, 1:] for s in states]
        features = self.multi_modal_projector(torch.cat(states, dim=-1))  # [images, n, hidden]
        for item, feature in zip(items, features, strict=True):
            if feature.shape[0] != item.num_tokens:
                raise UnsupportedModelError(
                    f"an image gives {feature.shape[0]} embeddings but its placeholder holds "
                    f"{item.num_tokens} tokens"
                )
        return list(features)

    # ------------------------------------------------------------------ weights
    def _module_name(self, name: str) -> str | None:
        name = _canonical_name(name)
        if name.startswith("vision_tower."):
            if not self.vision_tower.used(name.removeprefix("vision_tower.")):
                return None
            if name.endswith("position_ids"):
                return None
        return name


def _canonical_name(name: str) -> str:
    """A checkpoint name in this module tree's terms (either HF naming)."""
    if name.startswith("model.language_model."):
        return "language_model.model." + name.removeprefix("model.language_model.")
    if name.startswith("lm_head."):
        return "language_model." + name
    if name.startswith(("model.vision_tower.", "model.multi_modal_projector.")):
        name = name.removeprefix("model.")
    if name.startswith("vision_tower.") and not name.startswith("vision_tower.vision_model."):
        # transformers >= 5 saves the CLIP tower without its `vision_model.` level.
        name = "vision_tower.vision_model." + name.removeprefix("vision_tower.")
    return name
