"""Writing a step's new keys and values into the paged KV cache.

The cache of one layer is a pair [num_blocks, block_size, num_kv_heads, head_dim]; token i goes
to ``slot_mapping[i] = block_id * block_size + offset``. A negative slot marks a padding token
(e.g. a CUDA-graph batch padded to a captured size) and is skipped, so the same launch serves
padded and unpadded batches without a host sync. H100 80GB HBM3, 8192 tokens x 8 kv heads x
d128 bf16 into 16-token blocks: 25.8 us (2.60 TB/s, 87% of D2D copy; index_copy_ 35.9 us).
"""

from __future__ import annotations

import torch

from mono_llm.kernels.backend import tl, triton, use_triton

# ----------------------------------------------------------------------------- kernel


@triton.jit
def _write_kv_kernel(
    key_ptr, value_ptr, key_cache_ptr, value_cache_ptr, slot_ptr,
    key_token_stride, key_head_stride, value_token_stride, value_head_stride,
    kc_block_stride, kc_slot_stride, kc_head_stride,
    vc_block_stride, vc_slot_stride, vc_head_stride,
    num_tokens, block_size, num_kv_heads,
    HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    # A tile of BLOCK_T tokens x (all heads * head_dim), heads and dims flattened into one axis.
    tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    slot = tl.load(slot_ptr + tokens, mask=tokens < num_tokens, other=-1).to(tl.int64)
    block = slot // block_size
    offset = slot % block_size
    hd = tl.arange(0, BLOCK_H * BLOCK_D)
    h = (hd // BLOCK_D)[None, :]
    d = (hd % BLOCK_D)[None, :]
    mask = (slot[:, None] >= 0) & (h < num_kv_heads) & (d < HEAD_DIM)
    t = tokens.to(tl.int64)[:, None]
    k = tl.load(key_ptr + t * key_token_stride + h * key_head_stride + d, mask=mask)
    v = tl.load(value_ptr + t * value_token_stride + h * value_head_stride + d, mask=mask)
    kc = (
        key_cache_ptr
        + (block * kc_block_stride + offset * kc_slot_stride)[:, None]
        + h * kc_head_stride
        + d
    )
    vc = (
        value_cache_ptr
        + (block * vc_block_stride + offset * vc_slot_stride)[:, None]
        + h * vc_head_stride
        + d
    )
    tl.store(kc, k.to(key_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(vc, v.to(value_cache_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- launcher


def _launch(
    key, value, key_cache, value_cache, slot_mapping,
    num_warps: int | None = None, block_t: int | None = None,
) -> None:  # fmt: skip
    num_tokens, num_kv_heads, head_dim = key.shape
    if num_tokens == 0:
        return
    if key.stride(-1) != 1:
        key = key.contiguous()
    if value.stride(-1) != 1:
        value = value.contiguous()
    block_h = triton.next_power_of_2(num_kv_heads)
    block_d = triton.next_power_of_2(head_dim)
    on_gpu = key.is_cuda
    # H100, T8192 x 8 kv heads x d128 bf16: 1 token/program, 2 warps: 28.6 us (78% of copy BW);
    # several tokens per program amortise the slot load and index math (see the bench sweep).
    block_t = block_t or (4 if on_gpu else 1)
    elems = block_t * block_h * block_d
    grid = (triton.cdiv(num_tokens, block_t),)
    _write_kv_kernel[grid](
        key, value, key_cache, value_cache, slot_mapping,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        num_tokens, key_cache.shape[1], num_kv_heads,
        HEAD_DIM=head_dim, BLOCK_T=block_t, BLOCK_H=block_h, BLOCK_D=block_d,
        num_warps=num_warps or max(1, min(8, elems // 1024)),
    )  # fmt: skip


# ----------------------------------------------------------------------------- reference


def reference(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Plain-torch scatter of ``key``/``value`` into the caches at ``slot_mapping`` (skip < 0)."""
    num_blocks, block_size = key_cache.shape[:2]
    valid = slot_mapping >= 0
    slots = slot_mapping[valid].long()
    key_cache.view(num_blocks * block_size, *key_cache.shape[2:])[slots] = key[valid].to(
        key_cache.dtype
    )
    value_cache.view(num_blocks * block_size, *value_cache.shape[2:])[slots] = value[valid].to(
        value_cache.dtype
    )


# ----------------------------------------------------------------------------- public


def write_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Store ``key``/``value`` [num_tokens, num_kv_heads, head_dim] into the paged caches
    [num_blocks, block_size, num_kv_heads, head_dim] at ``slot_mapping`` [num_tokens] (int64,
    ``block_id * block_size + offset``; negative = skip). In place; returns nothing.
    """
    if key.shape != value.shape or key.dim() != 3:
        raise ValueError("key and value must both be [num_tokens, num_kv_heads, head_dim]")
    if key_cache.shape[2:] != key.shape[1:] or value_cache.shape != key_cache.shape:
        raise ValueError(
            f"cache {tuple(key_cache.shape)} does not match key {tuple(key.shape)} heads/head_dim"
        )
    if slot_mapping.shape[0] != key.shape[0]:
        raise ValueError("slot_mapping must have one entry per token")
    if use_triton(key):
        _launch(key, value, key_cache, value_cache, slot_mapping)
    else:
        reference(key, value, key_cache, value_cache, slot_mapping)


__all__ = ["reference", "write_kv_cache"]
