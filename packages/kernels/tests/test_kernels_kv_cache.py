"""KV-cache write kernel vs its reference: slots across block boundaries, padding, views."""

from __future__ import annotations

import pytest
import torch

from mono_llm import kernels
from mono_llm.kernels import reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("num_kv_heads,head_dim,block_size", [(1, 64, 16), (2, 128, 4), (3, 64, 1)])
def test_write_kv_cache_kernel_matches_reference(
    triton_device, dtype, num_kv_heads, head_dim, block_size
):
    gen = torch.Generator().manual_seed(5)
    num_blocks, T = 12, 9
    # k, v as strided views into a fused projection output
    kv = torch.randn(T, 2 * num_kv_heads * head_dim + 7, generator=gen).to(dtype).to(triton_device)
    key = kv[:, : num_kv_heads * head_dim].view(T, num_kv_heads, head_dim)
    value = kv[:, num_kv_heads * head_dim : 2 * num_kv_heads * head_dim].view(
        T, num_kv_heads, head_dim
    )
    total = num_blocks * block_size
    slots = torch.randperm(total - 1, generator=gen)[:T]  # distinct: duplicate slots would race
    slots[2] = -1  # padding token
    slots[4] = total - 1  # the very last slot
    slots = slots.to(triton_device)
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    kc, vc = (
        torch.zeros(shape, dtype=dtype, device=triton_device),
        torch.zeros(shape, dtype=dtype, device=triton_device),
    )
    want_k, want_v = kc.clone(), vc.clone()
    with kernels.use_backend("triton"):
        kernels.write_kv_cache(key, value, kc, vc, slots)
    reference.write_kv_cache(key, value, want_k, want_v, slots)
    assert torch.equal(kc, want_k) and torch.equal(vc, want_v)  # a copy: bit-exact


def test_write_kv_cache_rejects_shape_mismatch():
    with pytest.raises(ValueError):
        kernels.write_kv_cache(
            torch.randn(2, 2, 8), torch.randn(2, 2, 8), torch.zeros(4, 4, 2, 16), torch.zeros(4, 4, 2, 16),
            torch.tensor([0, 1]),
        )  # fmt: skip
