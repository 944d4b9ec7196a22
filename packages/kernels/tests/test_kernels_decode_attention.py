"""Split-K decode kernel vs its reference over split counts, context lengths, GQA and dtypes."""

from __future__ import annotations

import pytest
import torch

from mono_llm import kernels
from mono_llm.kernels import reference
from mono_llm.kernels.decode_attention import choose_num_splits

TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (5e-3, 5e-3), torch.bfloat16: (3e-2, 3e-2)}
# contexts of one token, around block and tile boundaries, and a longer one
SEQ_LENS = [1, 15, 16, 17, 130]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("heads", [(4, 4), (8, 2), (8, 1)], ids=lambda h: f"{h[0]}q{h[1]}kv")
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("num_splits", [1, 3, None])
def test_decode_kernel_matches_reference(
    triton_device, paged_batch, dtype, heads, head_dim, num_splits
):
    b = paged_batch([1] * len(SEQ_LENS), SEQ_LENS, *heads, head_dim, 16, dtype, triton_device)
    args = (b.query, b.key_cache, b.value_cache, b.block_tables, b.seq_lens_t, b.scale)
    with kernels.use_backend("triton"):
        got = kernels.paged_decode_attention(
            *args, num_splits=num_splits, max_seq_len=max(SEQ_LENS)
        )
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(got, reference.paged_decode_attention(*args), atol=atol, rtol=rtol)


def test_decode_kernel_more_splits_than_tiles_and_unaligned_blocks(triton_device, paged_batch):
    # 7 splits over 20 keys: most splits are empty and must weigh nothing in the merge
    b = paged_batch([1, 1], [20, 3], 4, 2, 64, 6, torch.float32, triton_device)
    args = (b.query, b.key_cache, b.value_cache, b.block_tables, b.seq_lens_t, b.scale)
    with kernels.use_backend("triton"):
        got = kernels.paged_decode_attention(*args, num_splits=7)
    torch.testing.assert_close(got, reference.paged_decode_attention(*args), atol=1e-4, rtol=1e-4)


def test_choose_num_splits_grows_for_small_batches_long_contexts():
    cpu = torch.device("cpu")
    assert choose_num_splits(1, 8, 32, cpu) == 1
    assert choose_num_splits(1, 8, 4096, cpu) > 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("softcap,window", [(8.0, None), (None, 7), (3.0, 40), (None, 1)], ids=str)
@pytest.mark.parametrize("num_splits", [1, 3, None])
def test_decode_kernel_softcap_and_window(
    triton_device, paged_batch, dtype, softcap, window, num_splits
):
    """The window leaves out whole tiles and splits (130 keys, window 7 or 1) or a part of one."""
    b = paged_batch([1] * len(SEQ_LENS), SEQ_LENS, 8, 2, 64, 16, dtype, triton_device)
    b.query = b.query * 3
    args = (b.query, b.key_cache, b.value_cache, b.block_tables, b.seq_lens_t, b.scale)
    options = {"softcap": softcap, "window": window}
    with kernels.use_backend("triton"):
        got = kernels.paged_decode_attention(
            *args, num_splits=num_splits, max_seq_len=max(SEQ_LENS), **options
        )
    want = reference.paged_decode_attention(*args, **options)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)
