"""Scheduling decisions on their own: token budget, sequence cap, chunked prefill,
preemption, priorities and aborts (no model: the test plays the model runner)."""

from __future__ import annotations

from mono_llm.core.config import SchedulerConfig
from mono_llm.core.engine.request import Sequence, SequenceStatus
from mono_llm.core.engine.scheduler import Scheduler
from mono_llm.core.kv_cache import KVCacheManager
from mono_llm.core.sampling_params import SamplingParams
from mono_llm.core.worker.batch import LogitsWanted


def _scheduler(budget: int = 64, seqs: int = 8, blocks: int = 32, chunked: bool = True):
    config = SchedulerConfig(
        max_num_batched_tokens=budget,
        max_num_seqs=seqs,
        max_model_len=256,
        enable_chunked_prefill=chunked,
    )
    kv = KVCacheManager(blocks, 4, enable_caching=True)
    return Scheduler(config, kv), kv


def _seq(name: str, prompt_len: int, priority: int = 0, start: int = 0) -> Sequence:
    tokens = list(range(start, start + prompt_len))
    return Sequence(
        name,
        name,
        0,
        tokens,
        sampling_params=SamplingParams(),
        max_tokens=100,
        priority=priority,
        arrival_time=0.0,
    )


def _run_step(scheduler: Scheduler) -> dict[str, int]:
    """Schedule, pretend the model ran, append a token to sequences that sampled."""
    out = scheduler.schedule()
    scheduler.update(out)
    for item in out.scheduled:
        if item.samples:
            item.seq.append_token(7)
    return {item.seq.seq_id: item.num_new_tokens for item in out.scheduled}


def test_token_budget_and_chunked_prefill() -> None:
    scheduler, _ = _scheduler(budget=10)
    a, b = _seq("a", 6), _seq("b", 9, start=100)
    scheduler.add(a)
    scheduler.add(b)
    out = scheduler.schedule()
    assert [(i.seq.seq_id, i.num_new_tokens) for i in out.scheduled] == [("a", 6), ("b", 4)]
    assert out.scheduled[0].logits == LogitsWanted.LAST and out.scheduled[0].samples
    assert out.scheduled[1].logits == LogitsWanted.NONE and not out.scheduled[1].samples
    scheduler.update(out)
    a.append_token(7)
    # Next step: a decodes one token, b continues its prefill with the rest of the budget.
    assert _run_step(scheduler) == {"a": 1, "b": 5}
    assert _run_step(scheduler) == {"a": 1, "b": 1}


def test_no_chunking_waits_for_budget() -> None:
    scheduler, _ = _scheduler(budget=10, chunked=False)
    scheduler.add(_seq("a", 6))
    scheduler.add(_seq("b", 9, start=100))
    assert _run_step(scheduler) == {"a": 6}
    assert _run_step(scheduler) == {"a": 1, "b": 9}


def test_max_num_seqs_cap() -> None:
    scheduler, _ = _scheduler(seqs=2)
    for i in range(3):
        scheduler.add(_seq(f"s{i}", 3, start=10 * i))
    assert set(_run_step(scheduler)) == {"s0", "s1"}
    assert scheduler.num_waiting == 1


def test_preemption_by_recompute_and_resume() -> None:
    # 4 blocks of 4 tokens: two 7-token prompts fit (2 blocks each) until both need a third.
    scheduler, kv = _scheduler(blocks=4)
    a, b = _seq("a", 7), _seq("b", 7, start=100)
    scheduler.add(a)
    scheduler.add(b)
    assert _run_step(scheduler) == {"a": 7, "b": 7}
    assert _run_step(scheduler) == {"a": 1, "b": 1}  # 8 computed each: 2 full blocks each
    out = scheduler.schedule()  # each needs a third block: b (arrived last) is preempted
    assert [s.seq_id for s in out.preempted] == ["b"]
    assert b.status == SequenceStatus.PREEMPTED and b.num_computed_tokens == 0
    assert [i.seq.seq_id for i in out.scheduled] == ["a"]
    assert scheduler.num_preemptions == 1
    scheduler.update(out)
    a.append_token(7)
    scheduler.finish([a], SequenceStatus.FINISHED_STOPPED)
    # b recomputes. a's third block evicted b's second (tails go first); b's first block is
    # still a prefix-cache hit, so only tokens 4..8 are recomputed.
    out = scheduler.schedule()
    assert [(i.seq.seq_id, i.start, i.num_new_tokens) for i in out.scheduled] == [("b", 4, 5)]
    assert out.scheduled[0].samples
    scheduler.update(out)
    scheduler.finish([b], SequenceStatus.FINISHED_STOPPED)
    assert kv.num_free_blocks == 4


def test_priority_then_fcfs() -> None:
    scheduler, _ = _scheduler(seqs=1)
    low = _seq("low", 3, priority=5)
    first = _seq("first", 3, start=10)
    second = _seq("second", 3, start=20)
    for seq in (low, first, second):
        scheduler.add(seq)
    assert list(_run_step(scheduler)) == ["first"]
    scheduler.finish([first], SequenceStatus.FINISHED_STOPPED)
    assert list(_run_step(scheduler)) == ["second"]
    scheduler.finish([second], SequenceStatus.FINISHED_STOPPED)
    assert list(_run_step(scheduler)) == ["low"]


def test_abort_waiting_and_running_frees_blocks() -> None:
    scheduler, kv = _scheduler(seqs=1)
    running, waiting = _seq("r", 9), _seq("w", 5, start=50)
    scheduler.add(running)
    scheduler.add(waiting)
    _run_step(scheduler)
    assert kv.num_free_blocks < 32
    scheduler.finish([waiting], SequenceStatus.FINISHED_ABORTED)
    scheduler.finish([running], SequenceStatus.FINISHED_ABORTED)
    assert not scheduler.has_unfinished()
    assert kv.num_free_blocks == 32
    assert scheduler.schedule().is_empty


def test_siblings_wait_for_the_shared_prompt() -> None:
    scheduler, kv = _scheduler()
    leader, sibling = _seq("a#0", 9), _seq("a#1", 9)
    sibling.wait_for = leader
    scheduler.add(leader)
    scheduler.add(sibling)
    assert _run_step(scheduler) == {"a#0": 9}
    step = _run_step(scheduler)
    assert step == {"a#0": 1, "a#1": 1}  # 8 of 9 prompt tokens were cached blocks
    assert kv.block_table(leader)[:2] == kv.block_table(sibling)[:2]
    assert (kv.prefix_cache_queries, kv.prefix_cache_hits) == (9 + 9, 8)


def test_failed_admissions_do_not_count_as_cache_lookups() -> None:
    scheduler, kv = _scheduler(blocks=3)
    scheduler.add(_seq("a", 12))  # 3 blocks: the whole cache
    scheduler.add(_seq("b", 5, start=50))
    for _ in range(3):
        scheduler.update(scheduler.schedule())  # b never fits while a holds every block
    assert scheduler.num_waiting == 1
    assert kv.prefix_cache_queries == 12
