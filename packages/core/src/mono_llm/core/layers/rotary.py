"""Rotary position embedding: reads either HF config style and owns the cos/sin table."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mono_llm.core.layers.ops import ops


def rope_settings(
    config: dict[str, Any], layer_type: str = "full_attention"
) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling or None) from an HF text config.

    transformers >= 5 writes `rope_parameters` (theta and scaling in one dict); released
    checkpoints mostly carry a top-level `rope_theta` plus an optional `rope_scaling`.
    Models whose layer types rotate differently (Gemma 3) get `rope_parameters` keyed by layer
    type; `layer_type` picks one (the full-attention entry also serves the flat spellings).
    """
    params = config.get("rope_parameters")
    if isinstance(params, dict) and params and all(isinstance(v, dict) for v in params.values()):
        # Per-layer-type parameters ({"full_attention": {...}, "sliding_attention": {...}}).
        params = params.get(layer_type) or next(iter(params.values()))
    if isinstance(params, dict) and params:
        theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        theta = float(config.get("rope_theta", 10000.0))
        scaling = dict(config.get("rope_scaling") or {})
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    # "mrope" (Qwen2-VL) is default RoPE whose frequencies read 3-D positions; the sections
    # come from `mrope_section` (see RotaryEmbedding), not from the scaling.
    if kind in (None, "default", "mrope"):
        return theta, None
    if kind == "su" or (kind == "yarn" and "long_factor" in scaling):
        # Early Phi-3 configs name LongRoPE "su" (or "yarn"); transformers reads both as it.
        kind = "longrope"
    scaling["rope_type"] = kind
    scaling.pop("type", None)
    if kind == "longrope":
        _fill_longrope(config, scaling)
    if kind == "yarn" and not scaling.get("original_max_position_embeddings"):
        # As transformers: without it, yarn scales from the declared context length.
        trained = config.get("max_position_embeddings")
        if isinstance(trained, int):
            scaling["original_max_position_embeddings"] = trained
    return theta, scaling


def _fill_longrope(config: dict[str, Any], scaling: dict[str, Any]) -> None:
    """The LongRoPE keys transformers derives from the rest of the config.

    Phi-3 configs keep the pre-training length as a top-level `original_max_position_embeddings`
    (which transformers prefers to one inside the scaling dict), and leave `factor` out: the
    attention factor then follows max_position_embeddings / original_max_position_embeddings.
    """
    trained = config.get("max_position_embeddings")
    original = config.get("original_max_position_embeddings") or scaling.get(
        "original_max_position_embeddings", trained
    )
    if isinstance(original, int):
        scaling["original_max_position_embeddings"] = original
        if scaling.get("factor") is None and isinstance(trained, int):
            scaling["factor"] = trained / original


def partial_rotary_dim(config: dict[str, Any], head_dim: int) -> int:
    """How many leading dims of each head RoPE rotates: `partial_rotary_factor` of head_dim
    (Phi-4-mini 0.75; 1.0 when absent), read at the top level or, as transformers 5 writes
    it, inside `rope_parameters`; truncated as transformers truncates it."""
    factor = config.get("partial_rotary_factor")
    params = config.get("rope_parameters")
    if factor is None and isinstance(params, dict):
        factor = params.get("partial_rotary_factor")
    return int(head_dim * float(factor if factor is not None else 1.0))


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
        mrope_section: list[int] | None = None,
        context_len: int | None = None,
    ) -> None:
        """`context_len`: the longest sequence served (max_model_len); LongRoPE chooses its
        long or short factors by it for every sequence (default: max_position)."""
        super().__init__()
        self.head_dim = head_dim
        self.max_position = max_position
        self.base = base
        self.rope_scaling = rope_scaling
        self.rotary_dim = rotary_dim or head_dim
        self.is_neox = is_neox
        self.context_len = context_len
        self.cos_sin_cache: torch.Tensor | None = None
        # M-RoPE (Qwen2-VL): the rotary frequencies split into (temporal, height, width)
        # sections, each rotated by its own axis of a [3, num_tokens] position tensor.
        self.mrope_section = list(mrope_section) if mrope_section else None
        self._mrope_axis: torch.Tensor | None = None

    def build_cache(self, device: torch.device) -> None:
        self.cos_sin_cache = ops.rope_cos_sin_cache(
            self.head_dim,
            self.max_position,
            self.base,
            self.rope_scaling,
            rotary_dim=self.rotary_dim,
            dtype=torch.float32,
            device=device,
            context_len=self.context_len,
        )  # [max_position, rotary_dim]
        if self.mrope_section is not None:
            half = self.rotary_dim // 2
            if sum(self.mrope_section) != half:
                raise ValueError(f"mrope_section {self.mrope_section} must sum to {half}")
            axis = torch.repeat_interleave(
                torch.arange(3, device=device) % 3,
                torch.tensor(self.mrope_section, device=device),
            )
            self._mrope_axis = torch.cat([axis, axis])  # cos half, then sin half

    def forward(
        self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [num_tokens] (the text path), or [3, num_tokens] (M-RoPE: temporal,
        height and width position of each token)."""
        assert self.cos_sin_cache is not None, "build_cache() was not called"
        if positions.dim() == 2:
            return self._forward_mrope(positions, query, key)
        return ops.apply_rotary_embedding(
            positions, query, key, self.cos_sin_cache, is_neox=self.is_neox
        )

    def _forward_mrope(
        self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each frequency reads the axis its section names: a per-token cos/sin table is
        gathered ([num_tokens, rotary_dim]) and applied by the usual kernel with token i
        reading row i. Only steps that prefill media take this path; text steps pass 1-D
        positions (equal axes give exactly 1-D RoPE)."""
        assert self.cos_sin_cache is not None and self._mrope_axis is not None
        rows = self.cos_sin_cache[positions]  # [3, num_tokens, rotary_dim]
        index = self._mrope_axis.view(1, 1, -1).expand(1, rows.shape[1], -1)
        table = rows.gather(0, index)[0]  # [num_tokens, rotary_dim]
        own_rows = torch.arange(table.shape[0], device=positions.device)
        return ops.apply_rotary_embedding(own_rows, query, key, table, is_neox=self.is_neox)
