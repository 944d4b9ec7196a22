"""Linear layers whose weight is the concatenation of several checkpoint tensors.

HF checkpoints store q/k/v and gate/up as separate matrices; running them as one GEMM reads
the input once and launches one kernel instead of three (or two). Each fused layer knows where
every checkpoint shard lands in its output dimension.

Under tensor parallelism the fused layer is column-parallel: each rank holds a slice of every
shard (its own q heads, k/v heads, gate and up rows), given as the shard's local size and the
first checkpoint row of the slice.
"""

from __future__ import annotations

import torch
from torch import nn


class MergedLinear(nn.Linear):
    """`nn.Linear` whose output rows are named shards, loaded one checkpoint tensor at a time."""

    def __init__(
        self,
        in_features: int,
        shard_sizes: dict[str, int],
        bias: bool,
        source_offsets: dict[str, int] | None = None,
    ) -> None:
        super().__init__(in_features, sum(shard_sizes.values()), bias=bias)
        self.shard_offsets: dict[str, tuple[int, int]] = {}
        # shard -> first checkpoint row this rank holds; empty without tensor parallelism
        self.source_offsets = dict(source_offsets or {})
        offset = 0
        for name, size in shard_sizes.items():
            self.shard_offsets[name] = (offset, size)
            offset += size

    def load_shard(self, param: nn.Parameter, shard: str, loaded: torch.Tensor) -> None:
        """Copy checkpoint tensor `loaded` (weight or bias of shard `shard`) into `param`."""
        offset, size = self.shard_offsets[shard]
        target = param.data.narrow(0, offset, size)
        if self.source_offsets:  # tensor-parallel: this rank's rows of the checkpoint tensor
            start = self.source_offsets[shard]
            if loaded.shape[0] < start + size or loaded.shape[1:] != target.shape[1:]:
                raise ValueError(
                    f"shard {shard!r} expects rows [{start}, {start + size}) of shape "
                    f"{tuple(target.shape)}, got {tuple(loaded.shape)}"
                )
            loaded = loaded.narrow(0, start, size)
        if target.shape != loaded.shape:
            raise ValueError(
                f"shard {shard!r} expects shape {tuple(target.shape)}, got {tuple(loaded.shape)}"
            )
        target.copy_(loaded)
