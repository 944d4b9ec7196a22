"""Data parallelism behind one served model: N engine replicas, each a whole `AsyncLLM` (itself
possibly tensor-parallel), and a router that sends every request to the least loaded one.

Load is the number of requests a replica holds right now (admitted, not yet finished), counted
here as requests start and end rather than read from the replicas' stats, which lag by a
step: a burst of requests arriving together spreads over the replicas instead of piling onto
whichever looked idle a moment ago. Ties go round-robin. The router answers the same calls as
one `AsyncLLM` (generate, encode, abort, get_stats, check_health, shutdown), so the serving
code and /metrics see one model; its stats are the replicas' summed (KV usage averaged).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections.abc import AsyncGenerator, Iterable
from typing import Any

from mono_llm.core.config import EngineArgs
from mono_llm.core.outputs import SchedulerStats


class DataParallelRouter:
    """Several replicas of one model; `replicas[i]` is an `AsyncLLM`."""

    def __init__(self, replicas: list[Any]) -> None:
        if not replicas:
            raise ValueError("a data-parallel router needs at least one replica")
        self.replicas = replicas
        first = replicas[0]
        self.model_config = first.model_config
        self.tokenizer = first.tokenizer
        self.engine_config = getattr(first, "engine_config", None)
        self.in_flight = [0] * len(replicas)  # requests each replica holds now
        self.requests_served = [0] * len(replicas)  # cumulative, for operators and tests
        self._owner: dict[str, int] = {}  # request id -> replica
        self._next = itertools.count()

    @classmethod
    def from_engine_args(cls, args: EngineArgs) -> DataParallelRouter:
        """Start `args.data_parallel_size` replicas; replica i takes devices
        [i * tensor_parallel_size, (i + 1) * tensor_parallel_size)."""
        from mono_llm.core.async_llm import AsyncLLM

        replicas: list[Any] = []
        try:
            for index in range(args.data_parallel_size):
                config = args.create_engine_config()
                config.parallel_config = dataclasses.replace(
                    config.parallel_config, first_device=index * args.tensor_parallel_size
                )
                replicas.append(AsyncLLM(config))
        except BaseException:
            for replica in replicas:
                replica.shutdown()
            raise
        return cls(replicas)

    # ------------------------------------------------------------------ AsyncLLM's calls
    def get_default_sampling_params(self) -> dict[str, Any]:
        return self.replicas[0].get_default_sampling_params()

    @property
    def is_running(self) -> bool:
        return all(r.is_running for r in self.replicas)

    @property
    def errored(self) -> bool:
        return any(r.errored for r in self.replicas)

    @property
    def dead_error(self) -> Exception:
        for replica in self.replicas:
            if not replica.is_running:
                return replica.dead_error
        return self.replicas[0].dead_error

    async def check_health(self) -> None:
        for replica in self.replicas:
            await replica.check_health()

    def get_stats(self) -> SchedulerStats:
        parts = [r.get_stats() for r in self.replicas]
        total = SchedulerStats()
        for field in dataclasses.fields(SchedulerStats):
            if field.name in ("kv_cache_usage", "extra"):
                continue
            setattr(total, field.name, sum(getattr(p, field.name) for p in parts))
        total.kv_cache_usage = sum(p.kv_cache_usage for p in parts) / len(parts)
        for part in parts:
            for key, value in part.extra.items():
                total.extra[key] = total.extra.get(key, 0.0) + value
        return total

    async def generate(self, prompt: Any, sampling_params: Any, request_id: str, **kw: Any):
        async for out in self._route("generate", request_id, prompt, sampling_params, **kw):
            yield out

    async def encode(self, prompt: Any, pooling_params: Any, request_id: str, **kw: Any):
        async for out in self._route("encode", request_id, prompt, pooling_params, **kw):
            yield out

    async def abort(self, request_id: str | Iterable[str]) -> None:
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        for rid in ids:
            owner = self._owner.get(rid)
            if owner is not None:
                await self.replicas[owner].abort(rid)

    def shutdown(self, timeout: float = 30.0) -> None:
        for replica in self.replicas:
            replica.shutdown(timeout)

    # ------------------------------------------------------------------ routing
    def pick(self) -> int:
        """The replica holding the fewest requests (ties: the next in round-robin order)."""
        start = next(self._next) % len(self.replicas)
        order = [(start + i) % len(self.replicas) for i in range(len(self.replicas))]
        return min(order, key=lambda i: self.in_flight[i])

    async def _route(
        self, method: str, request_id: str, *args: Any, **kwargs: Any
    ) -> AsyncGenerator[Any, None]:
        index = self.pick()
        self.in_flight[index] += 1
        self.requests_served[index] += 1
        self._owner[request_id] = index
        stream = getattr(self.replicas[index], method)(*args, request_id, **kwargs)
        try:
            # aclosing: a consumer that stops early aborts the replica's request now.
            async with contextlib.aclosing(stream) as outputs:
                async for out in outputs:
                    yield out
        finally:
            self.in_flight[index] -= 1
            self._owner.pop(request_id, None)
