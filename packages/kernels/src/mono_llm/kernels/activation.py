"""Gated activations of the MLP: ``act(x[..., :d]) * x[..., d:]`` for SiLU (SwiGLU, Llama) and
GELU (GeGLU, Gemma), fused so the [.., 2d] gate/up projection output is read once and the
[.., d] product written once. Computed in fp32, returned in the input dtype. H100 80GB HBM3,
8192 x 2*14336 bf16: 245 us (2.87 TB/s, 96% of D2D copy; torch.compile 235 us).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mono_llm.kernels.backend import tl, triton, use_triton

_GELU_MODES = {"none": 0, "tanh": 1}

# ----------------------------------------------------------------------------- kernel


@triton.jit
def _act_and_mul_kernel(
    x_ptr,
    out_ptr,
    x_row_stride,
    out_row_stride,
    d,
    ACT: tl.constexpr,  # 0 silu, 1 gelu (erf), 2 gelu (tanh approximation)
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < d
    gate = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * x_row_stride + d + cols, mask=mask, other=0.0).to(tl.float32)
    if ACT == 0:
        act = gate / (1.0 + tl.exp(-gate))
    elif ACT == 1:
        act = 0.5 * gate * (1.0 + tl.math.erf(gate * 0.7071067811865476))
    else:
        inner = 0.7978845608028654 * (gate + 0.044715 * gate * gate * gate)
        # tanh from exp alone (portable across triton versions), on |z| so exp never overflows
        e = tl.exp(-2.0 * tl.abs(inner))
        t = (1.0 - e) / (1.0 + e)
        act = 0.5 * gate * (1.0 + tl.where(inner >= 0, t, -t))
    tl.store(
        out_ptr + row * out_row_stride + cols, (act * up).to(out_ptr.dtype.element_ty), mask=mask
    )


# ----------------------------------------------------------------------------- launcher


def _launch(
    x: torch.Tensor, act: int, block: int | None = None, num_warps: int | None = None
) -> torch.Tensor:
    d = x.shape[-1] // 2
    x2 = x.reshape(-1, 2 * d)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = torch.empty((*x.shape[:-1], d), dtype=x.dtype, device=x.device)
    out2 = out.view(-1, d)
    if x2.shape[0] == 0 or d == 0:
        return out
    # H100, 8192x2*14336 bf16: 2048/8 warps 245 us vs 1024/4 warps 247 us (~95% of D2D copy);
    # anything from 512 to 4096 elements is within 2%, except 512 with 8 warps (285 us).
    block = block or min(2048, triton.next_power_of_2(d))
    grid = (x2.shape[0], triton.cdiv(d, block))
    _act_and_mul_kernel[grid](
        x2, out2, x2.stride(0), out2.stride(0), d, ACT=act, BLOCK=block,
        num_warps=num_warps or max(1, min(8, block // 256)),
    )  # fmt: skip
    return out


# ----------------------------------------------------------------------------- references


def reference_silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """Plain-torch ``silu(x[..., :d]) * x[..., d:]`` in fp32, output in ``x.dtype``."""
    d = x.shape[-1] // 2
    xf = x.float()
    return (F.silu(xf[..., :d]) * xf[..., d:]).to(x.dtype)


def reference_gelu_and_mul(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """Plain-torch ``gelu(x[..., :d], approximate) * x[..., d:]`` in fp32."""
    d = x.shape[-1] // 2
    xf = x.float()
    return (F.gelu(xf[..., :d], approximate=approximate) * xf[..., d:]).to(x.dtype)


# ----------------------------------------------------------------------------- public


def _check(x: torch.Tensor) -> None:
    if x.shape[-1] % 2:
        raise ValueError(f"last dim must be even (gate and up halves), got {x.shape[-1]}")


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """SwiGLU: ``silu(x[..., :d]) * x[..., d:]`` for ``x`` [..., 2d]; returns [..., d]."""
    _check(x)
    if use_triton(x):
        return _launch(x, 0)
    return reference_silu_and_mul(x)


def gelu_and_mul(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """GeGLU: ``gelu(x[..., :d]) * x[..., d:]``; ``approximate`` is "none" (erf) or "tanh"."""
    _check(x)
    if approximate not in _GELU_MODES:
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    if use_triton(x):
        return _launch(x, 1 + _GELU_MODES[approximate])
    return reference_gelu_and_mul(x, approximate)


__all__ = ["gelu_and_mul", "reference_gelu_and_mul", "reference_silu_and_mul", "silu_and_mul"]
