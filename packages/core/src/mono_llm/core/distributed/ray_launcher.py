"""Tensor-parallel ranks 1..N-1 as Ray actors (`distributed_executor_backend="ray"`).

Ray only places and starts the workers: a placement group with one bundle per worker (a GPU
each on CUDA, a CPU on CPU machines), all on the engine's node because the ranks meet over a
local TCP store and NCCL. Each actor then runs the very loop a local worker process runs
(`worker.run_worker`), so the two backends differ in who starts the process, nothing else.
Rank 0 stays in the engine process (under Ray Serve: the replica, which holds its own GPU).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from mono_llm.core.config import EngineConfig
from mono_llm.core.distributed.worker import Rendezvous, run_worker
from mono_llm.core.errors import ParallelConfigError

_PLACEMENT_TIMEOUT_S = 120.0


class RayLauncher:
    """Start ranks 1..N-1 as actors in a placement group; `stop` removes both."""

    def __init__(self, config: EngineConfig, rendezvous: Rendezvous) -> None:
        try:
            import ray
            from ray.util.placement_group import placement_group
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
        except ImportError as exc:
            raise ParallelConfigError(
                "--distributed-executor-backend ray needs Ray: pip install 'ray[default]'.",
                param="distributed_executor_backend",
            ) from exc
        if not ray.is_initialized():
            ray.init()  # joins the cluster RAY_ADDRESS names, else starts a local one
        self._ray = ray
        use_gpu = torch.device(config.device).type == "cuda"
        bundle: dict[str, float] = {"GPU": 1, "CPU": 1} if use_gpu else {"CPU": 1}
        # On this node: the workers meet rank 0 (this process) at 127.0.0.1.
        bundle[f"node:{ray.util.get_node_ip_address()}"] = 0.001
        count = rendezvous.size - 1
        self.placement_group = placement_group([dict(bundle) for _ in range(count)], "STRICT_PACK")
        ready, _ = ray.wait([self.placement_group.ready()], timeout=_PLACEMENT_TIMEOUT_S)
        if not ready:
            ray.util.remove_placement_group(self.placement_group)
            raise ParallelConfigError(
                f"Ray could not reserve {count} worker bundle(s) of {bundle} on one node within "
                f"{_PLACEMENT_TIMEOUT_S:.0f} s (--tensor-parallel-size {rendezvous.size}).",
                param="tensor_parallel_size",
            )
        actor_class = ray.remote(_RankActor)
        self.actors: list[Any] = []
        self.runs: list[Any] = []
        for index in range(count):
            rank = index + 1
            actor = actor_class.options(
                num_cpus=1,
                num_gpus=1 if use_gpu else 0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=self.placement_group, placement_group_bundle_index=index
                ),
                name=None,
            ).remote()
            self.actors.append(actor)
            # Ray shows each actor only its own GPU (CUDA_VISIBLE_DEVICES): it is cuda:0 there.
            self.runs.append(actor.run.remote(rank, config, rendezvous, use_gpu))

    def stop(self, timeout: float = 10.0) -> None:
        ray = self._ray
        if self.runs:
            ray.wait(self.runs, num_returns=len(self.runs), timeout=timeout)
        for actor in self.actors:
            ray.kill(actor)
        ray.util.remove_placement_group(self.placement_group)
        self.actors, self.runs = [], []


class _RankActor:
    """A Ray actor running one rank's worker loop until rank 0 says stop."""

    def run(self, rank: int, config: EngineConfig, rendezvous: Rendezvous, use_gpu: bool) -> None:
        if use_gpu:  # rank_config picks cuda:(first_device + rank), here cuda:0
            parallel = dataclasses.replace(config.parallel_config, first_device=-rank)
            config = dataclasses.replace(config, parallel_config=parallel)
        run_worker(rank, config, rendezvous)
