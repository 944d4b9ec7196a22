"""Gated-activation kernels vs their references."""

from __future__ import annotations

import pytest
import torch

from mono_llm import kernels
from mono_llm.kernels import reference

TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (3e-2, 2e-2)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(1, 2), (3, 200), (2, 2, 2 * 1500)])  # 1500 spans two blocks
@pytest.mark.parametrize("op", ["silu", "gelu", "gelu_tanh"])
def test_gated_activation_kernel_matches_reference(triton_device, dtype, shape, op):
    gen = torch.Generator().manual_seed(4)
    x = (3 * torch.randn(shape, generator=gen)).to(dtype).to(triton_device)
    with kernels.use_backend("triton"):
        if op == "silu":
            got, want = kernels.silu_and_mul(x), reference.silu_and_mul(x)
        else:
            mode = "tanh" if op == "gelu_tanh" else "none"
            got, want = kernels.gelu_and_mul(x, mode), reference.gelu_and_mul(x, mode)
    assert got.shape == (*shape[:-1], shape[-1] // 2)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)


def test_gated_activation_rejects_odd_width_and_bad_mode():
    with pytest.raises(ValueError):
        kernels.silu_and_mul(torch.randn(2, 5))
    with pytest.raises(ValueError):
        kernels.gelu_and_mul(torch.randn(2, 4), approximate="erf")
