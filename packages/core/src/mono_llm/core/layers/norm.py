"""RMSNorm that optionally fuses the residual add (one kernel instead of two).

Gemma stores its norm weights as offsets from one and scales by ``1 + weight`` in float32
(`unit_offset`); the kernels compute in float32 whatever the weight's dtype, so that scale is
formed in float32 and handed to them as the weight, never rounded to bfloat16 (where
``1 + weight`` would lose the weight's low bits).
"""

from __future__ import annotations

import torch
from torch import nn

from mono_llm.core.layers.ops import ops


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6, *, unit_offset: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.unit_offset = unit_offset
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def scale(self) -> torch.Tensor:
        """The per-channel factor: the weight, or float32 ``1 + weight`` with `unit_offset`."""
        return self.weight.float() + 1.0 if self.unit_offset else self.weight

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Without `residual`: rms_norm(x). With it: (rms_norm(x + residual), x + residual)."""
        if residual is None:
            return ops.rms_norm(x, self.scale(), self.eps)
        return ops.fused_add_rms_norm(x, residual, self.scale(), self.eps)
