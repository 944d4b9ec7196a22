"""DataParallelRouter with fake replicas: least-loaded routing, round-robin ties, aborts go to
the owning replica, stats are summed."""

from __future__ import annotations

import asyncio
from typing import Any

from mono_llm.core.outputs import SchedulerStats
from mono_llm.openai_api.data_parallel import DataParallelRouter


class FakeReplica:
    def __init__(self, name: str, stats: SchedulerStats) -> None:
        self.name = name
        self.model_config = self.tokenizer = None
        self.stats = stats
        self.release = asyncio.Event()
        self.aborted: list[str] = []
        self.is_running, self.errored = True, False

    async def generate(self, prompt: Any, params: Any, request_id: str, **kw: Any):
        await self.release.wait()
        yield (self.name, request_id)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    def get_stats(self) -> SchedulerStats:
        return self.stats


def test_least_loaded_routing_and_aborts() -> None:
    async def scenario() -> None:
        a = FakeReplica("a", SchedulerStats(num_running_reqs=2, kv_cache_usage=0.5, extra={"x": 1}))
        b = FakeReplica("b", SchedulerStats(num_running_reqs=3, kv_cache_usage=0.1, extra={"x": 2}))
        router = DataParallelRouter([a, b])

        async def run(rid: str) -> Any:
            return [out async for out in router.generate("p", None, rid)]

        # Three requests held by the replicas: they alternate (ties), then b is less loaded.
        tasks = [asyncio.create_task(run(f"r{i}")) for i in range(3)]
        await asyncio.sleep(0)
        assert sorted(router.in_flight) == [1, 2]
        lighter = router.in_flight.index(1)
        assert router.pick() == lighter  # the fewest requests wins whatever the rotation
        assert router.pick() == lighter
        held_by = {rid: router.replicas[i].name for rid, i in router._owner.items()}
        await router.abort("r0")
        assert (a if held_by["r0"] == "a" else b).aborted == ["r0"]
        a.release.set()
        b.release.set()
        results = await asyncio.gather(*tasks)
        assert {r[0][1] for r in results} == {"r0", "r1", "r2"}
        assert router.in_flight == [0, 0] and sorted(router.requests_served) == [1, 2]
        stats = router.get_stats()
        assert stats.num_running_reqs == 5
        assert stats.kv_cache_usage == 0.3
        assert stats.extra == {"x": 3}

    asyncio.run(scenario())
