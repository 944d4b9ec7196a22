"""Rotary position embedding: reads either HF config style and owns the cos/sin table."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mono_llm.core.layers.ops import ops


def rope_settings(config: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling or None) from an HF text config.

    transformers >= 5 writes `rope_parameters` (theta and scaling in one dict); released
    checkpoints mostly carry a top-level `rope_theta` plus an optional `rope_scaling`.
    """
    params = config.get("rope_parameters")
    if isinstance(params, dict) and params and all(isinstance(v, dict) for v in params.values()):
        # Per-layer-type parameters ({"full_attention": {...}, ...}); these models use full attention.
        params = params.get("full_attention") or next(iter(params.values()))
    if isinstance(params, dict) and params:
        theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        theta = float(config.get("rope_theta", 10000.0))
        scaling = dict(config.get("rope_scaling") or {})
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind in (None, "default"):
        return theta, None
    scaling["rope_type"] = kind
    scaling.pop("type", None)
    if kind == "yarn" and not scaling.get("original_max_position_embeddings"):
        # As transformers: without it, yarn scales from the declared context length.
        trained = config.get("max_position_embeddings")
        if isinstance(trained, int):
            scaling["original_max_position_embeddings"] = trained
    return theta, scaling


class RotaryEmbedding(nn.Module):
    """Applies RoPE to (q, k) by token position; one instance is shared by all layers.

    The cos/sin table is not a parameter: the loader calls `build_cache` once the module
    lives on its real device (models are constructed on the meta device).
    """

    def __init__(
        self,
        head_dim: int,
        max_position: int,
        base: float,
        rope_scaling: dict[str, Any] | None,
        rotary_dim: int | None = None,
        is_neox: bool = True,
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.max_position = max_position
        self.base = base
        self.rope_scaling = rope_scaling
        self.rotary_dim = rotary_dim or head_dim
        self.is_neox = is_neox
        self.cos_sin_cache: torch.Tensor | None = None

    def build_cache(self, device: torch.device) -> None:
        self.cos_sin_cache = ops.rope_cos_sin_cache(
            self.head_dim,
            self.max_position,
            self.base,
            self.rope_scaling,
            rotary_dim=self.rotary_dim,
            dtype=torch.float32,
            device=device,
        )  # [max_position, rotary_dim]

    def forward(
        self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.cos_sin_cache is not None, "build_cache() was not called"
        return ops.apply_rotary_embedding(
            positions, query, key, self.cos_sin_cache, is_neox=self.is_neox
        )
