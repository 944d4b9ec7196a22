"""RMSNorm kernels vs their references (Triton on GPU, or the interpreter on CPU)."""

from __future__ import annotations

import pytest
import torch

from mono_llm import kernels
from mono_llm.kernels import reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# bf16 tolerance is 2 ulp: the CPU interpreter rounds fp32 -> bf16 toward zero
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (5e-2, 2e-2)}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 64), (7, 100), (2, 3, 257), (0, 32)])
def test_rms_norm_kernel_matches_reference(triton_device, dtype, shape):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=gen).to(dtype).to(triton_device)
    w = torch.randn(shape[-1], generator=gen).to(dtype).to(triton_device)
    with kernels.use_backend("triton"):
        got = kernels.rms_norm(x, w, 1e-6)
    assert got.shape == x.shape and got.dtype == dtype
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(got, reference.rms_norm(x, w, 1e-6), atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 64), (5, 129), (2, 2, 96)])
def test_fused_add_rms_norm_kernel_matches_reference(triton_device, dtype, shape):
    gen = torch.Generator().manual_seed(2)
    x, r = (torch.randn(shape, generator=gen).to(dtype).to(triton_device) for _ in range(2))
    w = torch.rand(shape[-1], generator=gen).to(dtype).to(triton_device)
    with kernels.use_backend("triton"):
        out, s = kernels.fused_add_rms_norm(x, r, w, 1e-5)
    want_out, want_s = reference.fused_add_rms_norm(x, r, w, 1e-5)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(s, want_s, atol=atol, rtol=rtol)
    torch.testing.assert_close(out, want_out, atol=atol, rtol=rtol)


def test_rms_norm_kernel_reads_strided_rows(triton_device):
    wide = torch.randn(6, 80, device=triton_device)
    x = wide[:, 8:72]  # rows 80 apart, 64 wide: a view, not a copy
    w = torch.randn(64, device=triton_device)
    with kernels.use_backend("triton"):
        got = kernels.rms_norm(x, w, 1e-6)
    torch.testing.assert_close(got, reference.rms_norm(x, w, 1e-6), atol=1e-5, rtol=1e-5)


def test_rms_norm_rejects_mismatched_weight():
    with pytest.raises(ValueError):
        kernels.rms_norm(torch.randn(2, 8), torch.ones(9), 1e-6)
