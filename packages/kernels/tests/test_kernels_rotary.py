"""Rotary-embedding kernel vs its reference: neox and GPT-J, partial rotary, GQA, strided views."""

from __future__ import annotations

import pytest
import torch

from mono_llm import kernels
from mono_llm.kernels import reference

TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (3e-2, 2e-2)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
@pytest.mark.parametrize(
    "heads,head_dim,rotary_dim",
    # The last two: Phi-3-mini's head_dim 96 (48 frequencies, not a power of two) and
    # Phi-4-mini's 3/4 partial rotary of 128 dims.
    [((4, 4), 64, 64), ((8, 2), 128, 128), ((6, 1), 128, 32), ((4, 4), 96, 96), ((6, 2), 128, 96)],
)
def test_rotary_kernel_matches_reference(
    triton_device, dtype, is_neox, heads, head_dim, rotary_dim
):
    gen = torch.Generator().manual_seed(3)
    num_heads, num_kv_heads = heads
    T = 5
    positions = torch.tensor([0, 31, 7, 7, 1000]).to(triton_device)
    # q, k and v as views of one fused projection output, as a model produces them
    qkv = torch.randn(T, (num_heads + 2 * num_kv_heads) * head_dim, generator=gen).to(dtype)
    qkv = qkv.to(triton_device)
    q = qkv[:, : num_heads * head_dim].view(T, num_heads, head_dim)
    k = qkv[:, num_heads * head_dim : (num_heads + num_kv_heads) * head_dim].view(
        T, num_kv_heads, head_dim
    )
    cache = kernels.rope_cos_sin_cache(
        head_dim,
        1024 + 1,
        10000.0,
        {"rope_type": "linear", "factor": 2.0},
        rotary_dim,
        device=triton_device,
    )
    with kernels.use_backend("triton"):
        got_q, got_k = kernels.apply_rotary_embedding(positions, q, k, cache, is_neox)
    want_q, want_k = reference.apply_rotary_embedding(positions, q, k, cache, is_neox)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(got_q, want_q, atol=atol, rtol=rtol)
    torch.testing.assert_close(got_k, want_k, atol=atol, rtol=rtol)
    if rotary_dim < head_dim:  # pass-through dims are copied bit-exact
        assert torch.equal(got_q[..., rotary_dim:], q[..., rotary_dim:])


def test_rotary_kernel_empty_batch(triton_device):
    q = torch.empty(0, 2, 64, device=triton_device)
    k = torch.empty(0, 1, 64, device=triton_device)
    cache = kernels.rope_cos_sin_cache(64, 8, 10000.0, device=triton_device)
    with kernels.use_backend("triton"):
        got_q, got_k = kernels.apply_rotary_embedding(
            torch.empty(0, dtype=torch.long, device=triton_device), q, k, cache
        )
    assert got_q.shape == q.shape and got_k.shape == k.shape
