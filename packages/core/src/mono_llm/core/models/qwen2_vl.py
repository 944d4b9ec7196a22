"""Qwen2-VL and Qwen2.5-VL: a native-resolution vision transformer (qwen2_vl_vision.py) and a
Qwen2 decoder with M-RoPE.

An image arrives as its patches ([patches, C * temporal_patch * patch * patch]) with its patch
grid (t, h, w) and becomes t * h * w / 4 embeddings (one per 2x2 merge group); several images
run through the tower as one batch of concatenated patches. The decoder is models/llama.py's
Qwen2 whose rope layer reads 3-D positions (layers/rotary.py; layers/mrope.py computes them).

Checkpoint names: `visual.*`, `model.*`, `lm_head.*` (as released), or transformers >= 5's
`model.visual.*`, `model.language_model.*`, `lm_head.*`.
"""

from __future__ import annotations

from typing import Any

import torch

from mono_llm.core.errors import InvalidRequestError, UnsupportedModelError
from mono_llm.core.layers.mrope import mrope_prompt_positions
from mono_llm.core.models.llama import LlamaForCausalLM
from mono_llm.core.models.qwen2_vl_vision import Qwen2VisionSettings, Qwen2VisionTransformer
from mono_llm.core.models.registry import resolve_spec
from mono_llm.core.models.vision_language import VisionLanguageModel
from mono_llm.core.multimodal.inputs import MultiModalItem
from mono_llm.core.multimodal.prompt import mrope_section


class Qwen2VLForConditionalGeneration(VisionLanguageModel):
    """Vision transformer + Qwen2 decoder with M-RoPE (Qwen2-VL and Qwen2.5-VL).

    `forward`'s positions are [num_tokens] (text, shifted by each sequence's M-RoPE delta) or
    [3, num_tokens] (steps that prefill media).
    """

    uses_mrope = True

    def __init__(
        self, vision: Qwen2VisionSettings, language_model: LlamaForCausalLM, image_token_id: int
    ) -> None:
        super().__init__(language_model)
        self.visual = Qwen2VisionTransformer(vision)
        self.image_token_id = image_token_id

    @classmethod
    def from_hf_config(
        cls, config: dict[str, Any], architecture: str, max_model_len: int | None = None
    ) -> Qwen2VLForConditionalGeneration:
        text = config.get("text_config") or config
        language_model = LlamaForCausalLM.from_hf_config(text, "Qwen2ForCausalLM", max_model_len)
        section = mrope_section(config)
        if section is None:
            raise UnsupportedModelError(f"{architecture}: config.json has no mrope_section")
        language_model.model.rotary_emb.mrope_section = section
        decoder_naming = resolve_spec(["Qwen2ForCausalLM"]).weights
        vision = Qwen2VisionSettings.from_hf(
            config.get("vision_config") or {},
            language_model.hidden_size,
            qwen2_5=architecture == "Qwen2_5_VLForConditionalGeneration",
        )
        image_token = config.get("image_token_id", text.get("image_token_id"))
        if image_token is None:
            raise UnsupportedModelError("config.json names no image_token_id")
        model = cls(vision, language_model, int(image_token))
        model.decoder_naming = decoder_naming
        return model

    # ------------------------------------------------------------------ engine interface
    def check_multimodal_item(self, item: MultiModalItem) -> None:
        """Refuse, at admission, an image whose patches, grid and token count disagree."""
        s = self.visual.settings
        pixels, grid = item.data.get("pixel_values"), item.data.get("image_grid_thw")
        width = s.in_channels * s.temporal_patch_size * s.patch_size**2
        if pixels is None or grid is None or grid.numel() != 3 or pixels.dim() != 2:
            raise InvalidRequestError(
                "A Qwen2-VL image needs pixel_values patches and image_grid_thw."
            )
        t, h, w = (int(v) for v in grid.reshape(-1).tolist())
        merge = s.spatial_merge_size
        if min(t, h, w) < 1 or h % merge or w % merge or tuple(pixels.shape) != (t * h * w, width):
            raise InvalidRequestError(
                f"Image patches {tuple(pixels.shape)} do not match the grid {t}x{h}x{w} "
                f"(expected ({t * h * w}, {width}))."
            )
        if item.num_tokens != t * h * w // merge**2:
            raise InvalidRequestError(
                f"An image of grid {t}x{h}x{w} fills {t * h * w // merge**2} tokens, "
                f"not {item.num_tokens}."
            )

    def profile_items(self, num_tokens: int) -> list[MultiModalItem]:
        """One blank square image of about `num_tokens` merged patches, for the runner's
        memory profile (attention within an image is the largest block)."""
        s = self.visual.settings
        merge = s.spatial_merge_size
        side = max(1, int(num_tokens**0.5)) * merge  # patches per side
        width = s.in_channels * s.temporal_patch_size * s.patch_size**2
        device = self.visual.patch_embed.proj.weight.device
        data = {
            "pixel_values": torch.zeros(side * side, width, device=device),
            "image_grid_thw": torch.tensor([1, side, side]),
        }
        return [MultiModalItem("image", data, side * side // merge**2, content_hash="profile")]

    def embed_multimodal(self, items: list[MultiModalItem]) -> list[torch.Tensor]:
        """Each image's merged-patch embeddings [num_tokens, hidden], all images in one pass."""
        weight = self.visual.patch_embed.proj.weight
        grids = [_grid(item) for item in items]
        patches = torch.cat([item.data["pixel_values"] for item in items]).to(weight.device)
        merged = self.visual(patches, grids)
        sizes = [item.num_tokens for item in items]
        if sum(sizes) != merged.shape[0]:
            raise UnsupportedModelError(
                f"images give {merged.shape[0]} embeddings for {sum(sizes)} placeholder tokens"
            )
        return list(merged.split(sizes))

    def mrope_positions(self, num_tokens: int, items: list[MultiModalItem]) -> tuple[Any, int]:
        return mrope_prompt_positions(num_tokens, items, self.visual.settings.spatial_merge_size)

    # ------------------------------------------------------------------ weights
    def _module_name(self, name: str) -> str | None:
        if name.startswith("model.visual."):
            name = name.removeprefix("model.")
        if name.startswith("model.language_model."):
            name = "model." + name.removeprefix("model.language_model.")
        return name if name.startswith("visual.") else f"language_model.{name}"


def _grid(item: MultiModalItem) -> tuple[int, int, int]:
    grid = item.data.get("image_grid_thw")
    if grid is None:
        raise UnsupportedModelError("a Qwen2-VL image needs its image_grid_thw")
    t, h, w = (int(v) for v in grid.reshape(-1).tolist())
    return t, h, w
