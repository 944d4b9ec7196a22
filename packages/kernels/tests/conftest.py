"""Shared fixtures for the kernel tests: where kernels run, and a paged-cache builder."""

from __future__ import annotations

import pytest
import torch

from mono_llm.kernels.backend import triton_can_run

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def device() -> torch.device:
    """The device the Triton tests run on: the GPU when present, else CPU via the interpreter."""
    return DEVICE


@pytest.fixture
def triton_device() -> torch.device:
    """Like ``device`` but skips the test cleanly when Triton cannot execute there."""
    if not triton_can_run(DEVICE):
        pytest.skip("Triton cannot run here (no GPU and TRITON_INTERPRET is not 1)")
    return DEVICE


class PagedBatch:
    """A ragged batch with contiguous per-sequence K/V scattered into a shuffled paged cache.

    Keeps the unpaged K/V so tests can build an oracle that never touches block tables.
    """

    def __init__(
        self,
        query_lens: list[int],
        seq_lens: list[int],
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
        seed: int = 0,
    ) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.query_lens, self.seq_lens = query_lens, seq_lens
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        blocks_per_seq = [-(-s // block_size) for s in seq_lens]
        num_blocks = sum(blocks_per_seq) + 3  # spare blocks hold garbage the kernel must not read
        perm = torch.randperm(num_blocks, generator=gen)
        max_blocks = max(blocks_per_seq) + 1
        tables = torch.zeros(len(seq_lens), max_blocks, dtype=torch.int32)
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
        self.key_cache = torch.randn(shape, generator=gen).to(dtype) * 100  # poison
        self.value_cache = torch.randn(shape, generator=gen).to(dtype) * 100
        self.keys, self.values = [], []
        used = 0
        for s, (ctx, nb) in enumerate(zip(seq_lens, blocks_per_seq)):
            pages = perm[used : used + nb]
            used += nb
            tables[s, :nb] = pages.to(torch.int32)
            k = torch.randn(ctx, num_kv_heads, head_dim, generator=gen).to(dtype)
            v = torch.randn(ctx, num_kv_heads, head_dim, generator=gen).to(dtype)
            self.keys.append(k)
            self.values.append(v)
            for i in range(ctx):
                self.key_cache[pages[i // block_size], i % block_size] = k[i]
                self.value_cache[pages[i // block_size], i % block_size] = v[i]
        total = sum(query_lens)
        self.query = torch.randn(total, num_heads, head_dim, generator=gen).to(dtype)
        starts = [0]
        for q in query_lens:
            starts.append(starts[-1] + q)
        self.query_start_loc = torch.tensor(starts, dtype=torch.int32)
        self.seq_lens_t = torch.tensor(seq_lens, dtype=torch.int32)
        self.block_tables = tables
        self.scale = head_dim**-0.5
        for name in (
            "key_cache",
            "value_cache",
            "query",
            "query_start_loc",
            "seq_lens_t",
            "block_tables",
        ):
            setattr(self, name, getattr(self, name).to(device))
        self.keys = [k.to(device) for k in self.keys]
        self.values = [v.to(device) for v in self.values]


@pytest.fixture
def paged_batch():
    """Factory fixture: ``paged_batch(query_lens, seq_lens, H, Hkv, D, block_size, dtype, device)``."""
    return PagedBatch
