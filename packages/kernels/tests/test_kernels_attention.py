"""Paged-attention kernel vs its reference: ragged prefills, cached prefixes, decodes, GQA/MQA,
head dims 64/128, block sizes that align with the key tile and ones that do not."""

from __future__ import annotations

import pytest
import torch

from mono_llm import kernels
from mono_llm.kernels import reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (5e-3, 5e-3), torch.bfloat16: (3e-2, 3e-2)}
# fresh prefill (odd), chunk after a cached prefix crossing several tiles, two decodes (one at a
# block boundary), a sequence with no query tokens this step, a one-token prefill
QUERY_LENS = [13, 21, 1, 1, 0, 1]
SEQ_LENS = [13, 50, 16, 17, 9, 1]


def _run(b, **kwargs):
    args = (
        b.query,
        b.key_cache,
        b.value_cache,
        b.block_tables,
        b.query_start_loc,
        b.seq_lens_t,
        b.scale,
    )
    with kernels.use_backend("triton"):
        got = kernels.paged_attention(*args, **kwargs)
    options = {k: kwargs[k] for k in ("causal", "softcap", "window") if k in kwargs}
    want = reference.paged_attention(*args, **options)
    return got, want


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "heads", [(4, 4), (8, 2), (6, 2), (4, 1)], ids=lambda h: f"{h[0]}q{h[1]}kv"
)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("block_size", [16, 5])
def test_paged_attention_kernel_matches_reference(
    triton_device, paged_batch, dtype, heads, head_dim, block_size
):
    b = paged_batch(QUERY_LENS, SEQ_LENS, *heads, head_dim, block_size, dtype, triton_device)
    got, want = _run(b)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_paged_attention_kernel_non_causal_and_out(triton_device, paged_batch, dtype):
    b = paged_batch([9, 4], [9, 4], 4, 2, 64, 8, dtype, triton_device)
    out = torch.full_like(b.query, float("nan"))
    got, want = _run(b, causal=False, out=out)
    assert got is out
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)


def test_paged_attention_kernel_strided_query_and_decode_routing(triton_device, paged_batch):
    b = paged_batch([1, 1, 1], [40, 3, 17], 4, 2, 64, 16, torch.float32, triton_device)
    wide = torch.zeros(3, 4, 96, device=triton_device)
    wide[..., :64] = b.query
    b.query = wide[..., :64]  # a strided view (rows 96 apart)
    got, want = _run(b)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    got_dec, _ = _run(b, max_query_len=1, max_seq_len=40)  # routed to the split-K decode kernel
    torch.testing.assert_close(got_dec, want, atol=1e-4, rtol=1e-4)


def test_paged_attention_kernel_mqa_group_wider_than_tile(triton_device, paged_batch):
    # 32 query heads on one KV head: a tile row block holds few tokens of the whole group
    b = paged_batch([5, 2], [5, 30], 32, 1, 64, 16, torch.float32, triton_device)
    got, want = _run(b)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_paged_attention_rejects_bad_group():
    q = torch.randn(2, 6, 16)
    cache = torch.zeros(2, 4, 4, 16)
    with pytest.raises(ValueError):
        kernels.paged_attention(
            q, cache, cache, torch.zeros(1, 1, dtype=torch.int32), torch.tensor([0, 2], dtype=torch.int32),
            torch.tensor([2], dtype=torch.int32), 0.25,
        )  # fmt: skip


def test_kernels_refuse_caches_with_different_head_strides(triton_device, paged_batch):
    """The kernels index both caches' heads with the key cache's stride: a value cache with
    another layout is refused on the Triton path, while the reference still handles it."""
    b = paged_batch([3, 1], [7, 20], 4, 2, 64, 16, torch.float32, triton_device)
    want, _ = _run(b)
    # Same values, heads-major storage: shape unchanged, head stride differs.
    b.value_cache = b.value_cache.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    assert b.value_cache.stride(2) != b.key_cache.stride(2)
    with pytest.raises(ValueError, match="same head stride"):
        _run(b)
    decode = paged_batch([1, 1], [9, 33], 4, 2, 64, 16, torch.float32, triton_device)
    decode.value_cache = decode.value_cache.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    with pytest.raises(ValueError, match="same head stride"):  # routed to the split-K kernel
        _run(decode, max_query_len=1, max_seq_len=33)
    with kernels.use_backend("torch"):
        got = kernels.paged_attention(
            b.query, b.key_cache, b.value_cache, b.block_tables, b.query_start_loc, b.seq_lens_t, b.scale
        )  # fmt: skip
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("softcap,window", [(8.0, None), (None, 7), (3.0, 20), (None, 1)], ids=str)
@pytest.mark.parametrize("block_size", [16, 5])
def test_paged_attention_kernel_softcap_and_window(
    triton_device, paged_batch, dtype, softcap, window, block_size
):
    """Windows shorter than a key tile, spanning tiles and blocks, of one token; caps that bite
    (queries scaled up); prefills, a chunk after a long cached prefix, decodes."""
    b = paged_batch(
        [13, 21, 1, 1, 0, 1], [13, 70, 16, 40, 9, 1], 8, 2, 64, block_size, dtype, triton_device
    )
    b.query = b.query * 3
    got, want = _run(b, softcap=softcap, window=window)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)
