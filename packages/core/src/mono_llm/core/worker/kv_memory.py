"""How big the paged KV cache is, and the one tensor that holds it.

On CUDA the size comes from a profile: a forward pass of the largest step the scheduler can
make, run with a temporary cache just big enough for it, gives the peak memory of weights
plus activations; what `gpu_memory_utilization` leaves beyond that (and beyond memory the
CUDA context and other processes hold) is the KV budget. On CPU a fixed budget is used.
`kv_cache_memory_gib` and `num_gpu_blocks_override` bypass both.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

from mono_llm.core.config import CacheConfig
from mono_llm.core.errors import EngineError
from mono_llm.core.layers.attention import PagedAttention

logger = logging.getLogger(__name__)

_CPU_DEFAULT_KV_GIB = 1.0
# Kept free of the profiled peak for what the profile cannot see: CUDA graphs' private pool,
# allocator fragmentation, the sampler's temporaries beyond the ones simulated.
_CUDA_HEADROOM_BYTES = 512 * 1024**2


class PagedKVCache:
    """One tensor [layers, 2, num_blocks, block_size, kv_heads, head_dim], bound to the
    model's attention layers (each gets its key and value views)."""

    def __init__(
        self,
        layers: list[PagedAttention],
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.layers = layers
        self.dtype = dtype
        self.device = device
        first = layers[0] if layers else None
        self.block_shape = (
            (block_size, first.num_kv_heads, first.head_dim) if first is not None else ()
        )
        self.tensor: torch.Tensor | None = None

    @property
    def bytes_per_block(self) -> int:
        if not self.layers:
            return 0
        return 2 * len(self.layers) * math.prod(self.block_shape) * self.dtype.itemsize

    def allocate(self, num_blocks: int) -> None:
        """Zeroed: padded graph rows read block 0, and zeros keep them finite."""
        shape = (len(self.layers), 2, num_blocks, *self.block_shape)
        self.tensor = torch.zeros(shape, dtype=self.dtype, device=self.device)
        for i, layer in enumerate(self.layers):
            layer.bind_cache(self.tensor[i, 0], self.tensor[i, 1])

    def free(self) -> None:
        for layer in self.layers:
            layer.key_cache = layer.value_cache = None
        self.tensor = None


def determine_num_blocks(
    cache: CacheConfig,
    bytes_per_block: int,
    *,
    max_num_seqs: int,
    max_blocks_per_seq: int,
    block_size: int,
    max_model_len: int,
    profile: Callable[[], int] | None,
) -> int:
    """Blocks for the KV cache: the override, else budget / block size (the budget from
    `kv_cache_memory_gib`, else `profile()` when given (CUDA), else a fixed CPU budget),
    never more than every sequence at full length can use."""
    useful = max_num_seqs * max_blocks_per_seq
    if cache.num_gpu_blocks_override is not None:
        return cache.num_gpu_blocks_override
    if cache.kv_cache_memory_gib is not None:
        budget = int(cache.kv_cache_memory_gib * 1024**3)
    elif profile is not None:
        budget = profile()
    else:
        budget = int(_CPU_DEFAULT_KV_GIB * 1024**3)
    num_blocks = min(budget // bytes_per_block, useful)
    if num_blocks < 1:
        raise EngineError(
            f"no memory left for the KV cache (budget {budget / 1024**3:.2f} GiB); raise "
            "gpu_memory_utilization or kv_cache_memory_gib, or lower max_num_batched_tokens"
        )
    if num_blocks < max_blocks_per_seq:
        logger.warning(
            "KV cache of %d blocks holds fewer than max_model_len=%d tokens",
            num_blocks,
            max_model_len,
        )
    logger.info(
        "KV cache: %d blocks of %d tokens (%.2f GiB)",
        num_blocks,
        block_size,
        num_blocks * bytes_per_block / 1024**3,
    )
    return num_blocks


def profile_kv_budget(
    device: torch.device,
    gpu_memory_utilization: float,
    temp_cache_bytes: int,
    run_largest_step: Callable[[], None],
) -> int:
    """Bytes left for the KV cache after `run_largest_step()` (which allocates a temporary
    cache of `temp_cache_bytes`, runs the step and frees the cache)."""
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    run_largest_step()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - temp_cache_bytes
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    # Memory of other processes and the CUDA context, outside torch's allocator.
    non_torch = (total - free) - torch.cuda.memory_reserved(device)
    limit = total * gpu_memory_utilization
    budget = int(limit - peak - non_torch - _CUDA_HEADROOM_BYTES)
    logger.info(
        "profile: peak %.2f GiB (weights + activations), non-torch %.2f GiB, KV budget %.2f GiB",
        peak / 1024**3,
        non_torch / 1024**3,
        budget / 1024**3,
    )
    return budget
