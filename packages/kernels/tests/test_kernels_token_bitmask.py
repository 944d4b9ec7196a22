"""Token-bitmask kernel vs its reference."""

from __future__ import annotations

import pytest
import torch

from mono_llm import kernels
from mono_llm.kernels import reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("vocab,words", [(70, 3), (4096 + 5, 129), (100, 2)])  # last: mask shorter
@pytest.mark.parametrize("with_indices", [False, True])
def test_apply_token_bitmask_kernel_matches_reference(
    triton_device, dtype, vocab, words, with_indices
):
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(4, vocab, generator=gen).to(dtype).to(triton_device)
    bitmask = torch.randint(-(2**31), 2**31 - 1, (4, words), generator=gen, dtype=torch.int32)
    bitmask[1] = -1  # all allowed
    bitmask[3] = 0  # none allowed
    bitmask = bitmask.to(triton_device)
    indices = torch.tensor([3, 1, 0], device=triton_device) if with_indices else None
    got, want = logits.clone(), logits.clone()
    with kernels.use_backend("triton"):
        kernels.apply_token_bitmask(got, bitmask, indices)
    reference.apply_token_bitmask(want, bitmask, indices)
    assert torch.equal(got, want)
    covered = min(vocab, 32 * words)
    assert torch.isinf(got[3, :covered]).all() and not torch.isinf(got[1]).any()
    if not with_indices:
        assert torch.isinf(got[0]).any()


def test_apply_token_bitmask_rejects_wrong_dtype():
    with pytest.raises(ValueError):
        kernels.apply_token_bitmask(torch.randn(2, 10), torch.zeros(2, 1, dtype=torch.int64))
