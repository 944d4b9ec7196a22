"""The tensor-parallel group of one engine: which rank this process is and the collectives
its parallel layers need (all-reduce of partial sums, all-gather of vocabulary slices).

The group is a process group built directly from a TCP store rather than torch.distributed's
process-wide default group: the engine process may host several engines (several models, or
data-parallel replicas), each with its own group, and tests build many engines one after the
other in one interpreter. Backends: NCCL between GPUs (its all-reduce can be captured in a
CUDA graph, so decode graphs keep working), gloo between CPU processes (tests run two ranks
on a CPU machine).
"""

from __future__ import annotations

import contextlib
import datetime

import torch
import torch.distributed as dist

# A rank that waits longer than this for its peers gives up (a dead worker must not hang the
# engine forever); model loading happens before the first collective and is not counted.
DEFAULT_TIMEOUT = datetime.timedelta(minutes=10)


class TensorParallelGroup:
    """Rank `rank` of `size` ranks; a group of size 1 makes every collective a no-op."""

    def __init__(self, rank: int = 0, size: int = 1, process_group: object = None) -> None:
        if not 0 <= rank < size:
            raise ValueError(f"rank {rank} is not in a group of {size}")
        if size > 1 and process_group is None:
            raise ValueError("a group of more than one rank needs a process group")
        self.rank = rank
        self.size = size
        self._pg = process_group

    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        rank: int,
        size: int,
        backend: str,
        *,
        prefix: str = "tp",
        timeout: datetime.timedelta = DEFAULT_TIMEOUT,
    ) -> TensorParallelGroup:
        """Join the group whose TCP store rank 0 serves at host:port (see `make_store`)."""
        store = dist.TCPStore(host, port, size, is_master=False, timeout=timeout)
        prefixed = dist.PrefixStore(f"{prefix}/", store)
        if backend == "nccl":
            options = dist.ProcessGroupNCCL.Options()
            with contextlib.suppress(AttributeError):  # a private field, not in every torch
                options._timeout = timeout
            pg: object = dist.ProcessGroupNCCL(prefixed, rank, size, options)
        elif backend == "gloo":
            pg = dist.ProcessGroupGloo(prefixed, rank, size, timeout)
        else:
            raise ValueError(f"unknown backend {backend!r} (nccl or gloo)")
        group = cls(rank, size, pg)
        group._store = store  # keep the client alive as long as the group
        return group

    @property
    def is_parallel(self) -> bool:
        return self.size > 1

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the ranks, in place; returns it."""
        if self.size > 1:
            self._pg.allreduce([tensor]).wait()  # type: ignore[attr-defined]
        return tensor

    def all_gather(self, tensor: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Every rank's `tensor` concatenated along `dim`, in rank order."""
        if self.size == 1:
            return tensor
        tensor = tensor.contiguous()
        # Ranks stacked along dim 0 in one buffer (one collective), then laid out along `dim`.
        shape = tensor.shape
        gathered = torch.empty(
            (self.size * shape[0], *shape[1:]), dtype=tensor.dtype, device=tensor.device
        )
        self._pg._allgather_base(gathered, tensor).wait()  # type: ignore[attr-defined]
        return torch.cat(gathered.view(self.size, *shape).unbind(0), dim=dim % tensor.dim())

    def min_int(self, value: int, device: torch.device) -> int:
        """The smallest `value` over the ranks (every rank must call it at the same point);
        `device` is this rank's (NCCL reduces device tensors only)."""
        if self.size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=device)
        options = dist.AllreduceOptions()
        options.reduceOp = dist.ReduceOp.MIN
        self._pg.allreduce([tensor], options).wait()  # type: ignore[attr-defined]
        return int(tensor.item())


def make_store(host: str, world_size: int) -> dist.TCPStore:
    """The rendezvous store rank 0 serves on a free port (`store.port`), clients connect to it."""
    return dist.TCPStore(host, 0, world_size, is_master=True, wait_for_workers=False)
