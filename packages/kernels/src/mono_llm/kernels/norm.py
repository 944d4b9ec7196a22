"""RMSNorm and fused residual-add + RMSNorm.

``rms_norm(x, w, eps) = x / sqrt(mean(x², -1) + eps) * w``, computed in fp32 and returned in
``x.dtype``. The fused variant first forms ``s = x + residual`` (rounded to ``x.dtype``, exactly
as an HF decoder layer does with its residual stream), then normalises ``s``; it returns both,
so a decoder layer reads the residual stream once per norm instead of twice.

One Triton program normalises one row: the whole hidden vector lives in registers, so the op
reads x (and residual) once and writes once, which is the bandwidth floor. Measured on an
H100 80GB HBM3 at 8192x4096 bf16: rms_norm 49.9 us (2.69 TB/s, 90% of the 3.0 TB/s D2D copy),
fused_add_rms_norm 94.8 us (2.83 TB/s, 94%; two kernels, add then norm: 120 us).
"""

from __future__ import annotations

import torch

from mono_llm.kernels.backend import tl, triton, use_triton

# ----------------------------------------------------------------------------- kernels


@triton.jit
def _scaled_rms_norm(x, weight_ptr, cols, mask, hidden, eps):
    """One fp32 row ``x`` normalised and scaled by the weight: the same math in both kernels,
    so the fused op's norm is exactly ``rms_norm`` of the sum it stores."""
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / hidden + eps)
    w = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    return x * rstd * w


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    weight_ptr,
    out_ptr,
    x_row_stride,
    out_row_stride,
    hidden,
    eps,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    y = _scaled_rms_norm(x, weight_ptr, cols, mask, hidden, eps)
    tl.store(out_ptr + row * out_row_stride + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _fused_add_rms_norm_kernel(
    x_ptr,
    residual_ptr,
    weight_ptr,
    out_ptr,
    residual_out_ptr,
    x_row_stride,
    residual_row_stride,
    out_row_stride,
    residual_out_row_stride,
    hidden,
    eps,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(residual_ptr + row * residual_row_stride + cols, mask=mask, other=0.0)
    # Round the sum to the storage dtype before normalising: the residual stream is stored in
    # that dtype, and the norm must see the same values the next layer will add to.
    s = (x + r.to(tl.float32)).to(residual_out_ptr.dtype.element_ty)
    tl.store(residual_out_ptr + row * residual_out_row_stride + cols, s, mask=mask)
    y = _scaled_rms_norm(s.to(tl.float32), weight_ptr, cols, mask, hidden, eps)
    tl.store(out_ptr + row * out_row_stride + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- launchers


def _row_settings(hidden: int, num_warps: int | None) -> tuple[int, int]:
    """Block (whole row, power of two) and warps (``num_warps`` when given, else ~16 elements
    per thread, at most 8 warps).

    H100, 8192x4096 bf16 sweep: rms_norm 8 warps 50.3 us vs 16 warps 51.7 (32: 74.1);
    fused_add_rms_norm 8 warps 94.3 us vs 16 warps 95.5 (~2.85 TB/s, 95% of D2D copy).
    """
    block = triton.next_power_of_2(hidden)
    return block, num_warps or max(1, min(8, block // 512))


def _as_rows(t: torch.Tensor, hidden: int) -> torch.Tensor:
    t2 = t.reshape(-1, hidden)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _launch_rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, num_warps: int | None = None
) -> torch.Tensor:
    hidden = x.shape[-1]
    x2 = _as_rows(x, hidden)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    out2 = out.view(-1, hidden)
    if x2.shape[0] == 0:
        return out
    block, num_warps = _row_settings(hidden, num_warps)
    _rms_norm_kernel[(x2.shape[0],)](
        x2,
        weight,
        out2,
        x2.stride(0),
        out2.stride(0),
        hidden,
        eps,
        BLOCK=block,
        num_warps=num_warps,
    )
    return out


def _launch_fused_add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    num_warps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    hidden = x.shape[-1]
    x2 = _as_rows(x, hidden)
    r2 = _as_rows(residual, hidden)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    residual_out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x2.shape[0] == 0:
        return out, residual_out
    out2, ro2 = out.view(-1, hidden), residual_out.view(-1, hidden)
    block, num_warps = _row_settings(hidden, num_warps)
    _fused_add_rms_norm_kernel[(x2.shape[0],)](
        x2,
        r2,
        weight,
        out2,
        ro2,
        x2.stride(0),
        r2.stride(0),
        out2.stride(0),
        ro2.stride(0),
        hidden,
        eps,
        BLOCK=block,
        num_warps=num_warps,
    )
    return out, residual_out


# ----------------------------------------------------------------------------- references


def reference_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Plain-torch RMSNorm in fp32, output in ``x.dtype``."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    return y.to(x.dtype)


def reference_fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-torch ``(rms_norm(x + residual), x + residual)``; the sum is rounded to x.dtype."""
    s = (x.float() + residual.float()).to(x.dtype)
    return reference_rms_norm(s, weight, eps), s


# ----------------------------------------------------------------------------- public


def _check(x: torch.Tensor, weight: torch.Tensor) -> None:
    if weight.dim() != 1 or weight.shape[0] != x.shape[-1]:
        raise ValueError(f"weight shape {tuple(weight.shape)} does not match hidden {x.shape[-1]}")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS-normalise the last dim of ``x`` [..., hidden] and scale by ``weight`` [hidden].

    Computed in fp32; returns a new tensor in ``x.dtype``.
    """
    _check(x, weight)
    if use_triton(x):
        return _launch_rms_norm(x, weight, eps)
    return reference_rms_norm(x, weight, eps)


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(rms_norm(x + residual, weight, eps), x + residual)`` in one pass.

    ``x`` and ``residual`` have the same shape [..., hidden] and dtype; the sum is rounded to
    that dtype before the norm (as an HF decoder layer stores its residual stream).
    """
    _check(x, weight)
    if x.shape != residual.shape:
        raise ValueError(f"x {tuple(x.shape)} and residual {tuple(residual.shape)} differ")
    if use_triton(x):
        return _launch_fused_add_rms_norm(x, residual, weight, eps)
    return reference_fused_add_rms_norm(x, residual, weight, eps)


reference = reference_rms_norm

__all__ = [
    "fused_add_rms_norm",
    "reference",
    "reference_fused_add_rms_norm",
    "reference_rms_norm",
    "rms_norm",
]
