"""CLIP's vision transformer, as LLaVA uses it: patch embeddings, pre-norm, encoder layers.

Only the layers up to the deepest feature layer the multimodal model reads are built (LLaVA-1.5
reads the second-to-last, so the last layer and the final norm are never run, and their
checkpoint tensors are skipped). Module names follow HF's `CLIPVisionModel`
(`vision_model.embeddings...`, `vision_model.encoder.layers.N...`). Attention is plain
bidirectional SDPA over each image's patches: images are fixed-size, so a batch of images is
one dense [images, patches, hidden] tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mono_llm.core.errors import UnsupportedModelError


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


VISION_ACTIVATIONS = {
    "quick_gelu": quick_gelu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
}


def vision_activation(name: str) -> Any:
    act = VISION_ACTIVATIONS.get(name)
    if act is None:
        raise UnsupportedModelError(f"vision hidden_act={name!r} is not supported")
    return act


@dataclass(slots=True)
class ClipVisionSettings:
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_layers: int  # layers built (up to the deepest feature layer)
    image_size: int
    patch_size: int
    num_channels: int
    layer_norm_eps: float
    hidden_act: str

    @classmethod
    def from_hf(cls, config: dict[str, Any], num_layers: int) -> ClipVisionSettings:
        return cls(
            hidden_size=int(config.get("hidden_size", 1024)),
            intermediate_size=int(config.get("intermediate_size", 4096)),
            num_heads=int(config.get("num_attention_heads", 16)),
            num_layers=num_layers,
            image_size=int(config.get("image_size", 336)),
            patch_size=int(config.get("patch_size", 14)),
            num_channels=int(config.get("num_channels", 3)),
            layer_norm_eps=float(config.get("layer_norm_eps", 1e-5)),
            hidden_act=str(config.get("hidden_act", "quick_gelu")),
        )

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class ClipVisionEmbeddings(nn.Module):
    def __init__(self, s: ClipVisionSettings) -> None:
        super().__init__()
        self.class_embedding = nn.Parameter(torch.empty(s.hidden_size))
        self.patch_embedding = nn.Conv2d(
            s.num_channels, s.hidden_size, s.patch_size, stride=s.patch_size, bias=False
        )
        self.position_embedding = nn.Embedding(s.num_patches + 1, s.hidden_size)
        self.image_size = s.image_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[images, C, H, W] -> [images, 1 + patches, hidden] (class token first)."""
        if pixel_values.shape[-2:] != (self.image_size, self.image_size):
            raise UnsupportedModelError(
                f"image of {tuple(pixel_values.shape[-2:])} pixels; this CLIP tower takes "
                f"{self.image_size}x{self.image_size}"
            )
        weight = self.patch_embedding.weight
        patches = self.patch_embedding(pixel_values.to(weight.dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight


class ClipAttention(nn.Module):
    def __init__(self, s: ClipVisionSettings) -> None:
        super().__init__()
        self.num_heads = s.num_heads
        self.head_dim = s.hidden_size // s.num_heads
        self.q_proj = nn.Linear(s.hidden_size, s.hidden_size)
        self.k_proj = nn.Linear(s.hidden_size, s.hidden_size)
        self.v_proj = nn.Linear(s.hidden_size, s.hidden_size)
        self.out_proj = nn.Linear(s.hidden_size, s.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        )  # [batch, heads, length, head_dim]
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, hidden))


class VisionMLP(nn.Module):
    """fc1, activation, fc2: the MLP of CLIP's and Qwen2-VL's vision blocks (same names)."""

    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.fc2 = nn.Linear(intermediate_size, hidden_size)
        self._act = vision_activation(hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self._act(self.fc1(x)))


class ClipEncoderLayer(nn.Module):
    def __init__(self, s: ClipVisionSettings) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(s.hidden_size, eps=s.layer_norm_eps)
        self.self_attn = ClipAttention(s)
        self.layer_norm2 = nn.LayerNorm(s.hidden_size, eps=s.layer_norm_eps)
        self.mlp = VisionMLP(s.hidden_size, s.intermediate_size, s.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class ClipEncoder(nn.Module):
    def __init__(self, s: ClipVisionSettings) -> None:
        super().__init__()
        self.layers = nn.ModuleList([ClipEncoderLayer(s) for _ in range(s.num_layers)])


class ClipVisionTransformer(nn.Module):
    def __init__(self, s: ClipVisionSettings) -> None:
        super().__init__()
        self.embeddings = ClipVisionEmbeddings(s)
        # (sic) HF's name for the norm before the encoder.
        self.pre_layrnorm = nn.LayerNorm(s.hidden_size, eps=s.layer_norm_eps)
        self.encoder = ClipEncoder(s)


class ClipVisionTower(nn.Module):
    """Returns the hidden states after the requested layers (0 = the normed embeddings)."""

    def __init__(self, s: ClipVisionSettings) -> None:
        super().__init__()
        self.settings = s
        self.vision_model = ClipVisionTransformer(s)

    def forward(self, pixel_values: torch.Tensor, layers: list[int]) -> list[torch.Tensor]:
        """pixel_values [images, C, H, W] -> the hidden states after each of `layers`
        (non-negative indices, as in HF's `hidden_states` tuple), each [images, 1 + patches,
        hidden]."""
        model = self.vision_model
        hidden = model.pre_layrnorm(model.embeddings(pixel_values))
        wanted = set(layers)
        found: dict[int, torch.Tensor] = {0: hidden} if 0 in wanted else {}
        for index, layer in enumerate(model.encoder.layers, start=1):
            hidden = layer(hidden)
            if index in wanted:
                found[index] = hidden
        return [found[i] for i in layers]

    def used(self, name: str) -> bool:
        """Whether checkpoint tensor `name` (relative to the tower) belongs to a built part."""
        if name.startswith("vision_model.encoder.layers."):
            index = int(name.split(".")[3])
            return index < self.settings.num_layers
        return not name.startswith("vision_model.post_layernorm.")
