"""Continuous batching: which sequences run in the next step, and how many tokens each.

Every sequence is just `num_tokens` (prompt plus generated so far) and `num_computed_tokens`
(already in the KV cache); a step gives a sequence `num_tokens - num_computed_tokens` new
tokens, clipped by the step's token budget. A fresh prompt, a chunk of a long prompt, a
recomputation after preemption and a one-token decode are therefore the same thing, as in
vLLM v1, and prefills and decodes share a step.

Policy: running sequences first, in (priority, arrival) order; when the KV cache runs out,
the running sequence that sorts last is preempted (its blocks freed, to be recomputed later,
mostly from the prefix cache). Waiting sequences are admitted in the same order while the
token budget, `max_num_seqs` and free blocks allow, and never in a step that had to preempt.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from mono_llm.core.config import SchedulerConfig
from mono_llm.core.engine.request import Sequence, SequenceStatus
from mono_llm.core.kv_cache import KVCacheManager
from mono_llm.core.worker.batch import LogitsWanted


@dataclass(slots=True)
class ScheduledSequence:
    seq: Sequence
    num_new_tokens: int
    logits: LogitsWanted
    # Tokens of the sequence in the KV cache before this step (the slice starts here).
    start: int = 0
    # Whether this step yields the sequence's next token (its slice reaches the end).
    samples: bool = False


@dataclass(slots=True)
class SchedulerOutput:
    scheduled: list[ScheduledSequence] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    # Sequences taken from the waiting queue this step, and the cached tokens (prefix cache
    # or a sibling's prompt blocks) they start from.
    num_admitted: int = 0
    admitted_cached_tokens: int = 0

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    """FCFS-with-priority continuous batching over a paged KV cache."""

    def __init__(self, config: SchedulerConfig, kv_cache: KVCacheManager) -> None:
        self.config = config
        self.kv_cache = kv_cache
        self.running: list[Sequence] = []
        # Heap of (sort key, sequence); aborted entries are dropped lazily when they surface.
        self._waiting: list[tuple[tuple[int, float, int], Sequence]] = []
        self._num_waiting = 0
        self.num_preemptions = 0  # cumulative
        # Called when a sequence's cache is released (finish, abort, preemption): what the
        # model runner keeps per sequence beside the KV blocks (cross-attention keys/values)
        # goes with them.
        self.on_release: Callable[[Sequence], None] | None = None

    # ------------------------------------------------------------------ queue management
    @property
    def num_waiting(self) -> int:
        return self._num_waiting

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_unfinished(self) -> bool:
        return bool(self.running) or self._num_waiting > 0

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self._push_waiting(seq)

    def _push_waiting(self, seq: Sequence) -> None:
        heapq.heappush(self._waiting, (seq.sort_key(), seq))
        self._num_waiting += 1

    def _peek_waiting(self) -> Sequence | None:
        while self._waiting:
            seq = self._waiting[0][1]
            if seq.status in (SequenceStatus.WAITING, SequenceStatus.PREEMPTED):
                return seq
            heapq.heappop(self._waiting)  # finished (aborted) while waiting
        return None

    def finish(self, seqs: Iterable[Sequence], status: SequenceStatus) -> None:
        """End sequences (stop, length, abort) wherever they are and free their blocks."""
        for seq in seqs:
            if seq.is_finished:
                continue
            if seq.status == SequenceStatus.RUNNING:
                self.running.remove(seq)
            else:
                self._num_waiting -= 1  # its heap entry is skipped when it surfaces
            seq.status = status
            self._release(seq)

    def _release(self, seq: Sequence) -> None:
        self.kv_cache.free(seq)
        if self.on_release is not None:
            self.on_release(seq)

    def _preempt(self, seq: Sequence) -> None:
        self._release(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.PREEMPTED
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self._push_waiting(seq)

    # ------------------------------------------------------------------ one step
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        block_size = self.kv_cache.block_size
        self.running.sort(key=Sequence.sort_key)
        index = 0
        while index < len(self.running) and budget > 0:
            seq = self.running[index]
            num_new = min(seq.num_tokens - seq.num_computed_tokens, budget)
            if num_new <= 0:  # nothing to do (cannot happen for live sequences)
                index += 1
                continue
            while not self.kv_cache.allocate(seq, num_new):
                victim = self.running.pop()  # sorts last; never one already scheduled
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is seq:
                    break
            if seq.status != SequenceStatus.RUNNING:
                break
            out.scheduled.append(self._scheduled(seq, num_new))
            budget -= num_new
            index += 1

        blocked: list[Sequence] = []
        while not out.preempted and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self._peek_waiting()
            if seq is None:
                break
            if self._is_blocked(seq):
                heapq.heappop(self._waiting)
                self._num_waiting -= 1
                blocked.append(seq)
                continue
            cached = self.kv_cache.find_cached_prefix(seq)
            leader = seq.prompt_leader
            if not cached and leader is not None and leader.status == SequenceStatus.RUNNING:
                cached = self.kv_cache.shared_prompt_blocks(leader, seq)
            num_computed = len(cached) * block_size
            # An encoder–decoder sequence runs its encoder in its first step: its cost counts
            # against the budget, and it waits for a step with room unless it is alone.
            encoder_cost = seq.encoder_cost
            if encoder_cost and out.scheduled and encoder_cost >= budget:
                break
            num_new = seq.num_tokens - num_computed
            if not self.config.enable_chunked_prefill and num_new > budget:
                break
            num_new = min(num_new, budget)
            if not self.kv_cache.allocate(seq, num_new, cached):
                break
            heapq.heappop(self._waiting)
            self._num_waiting -= 1
            if self.kv_cache.enable_caching and not seq.wants_prompt_logprobs:
                self.kv_cache.record_lookup(seq.num_tokens, num_computed)
            seq.prompt_leader = None  # shared (or not) once; a recomputation starts afresh
            seq.num_computed_tokens = num_computed
            if seq.num_cached_tokens < 0:
                seq.num_cached_tokens = num_computed
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            out.scheduled.append(self._scheduled(seq, num_new))
            out.num_admitted += 1
            out.admitted_cached_tokens += num_computed
            budget -= num_new + encoder_cost
        for seq in blocked:
            self._push_waiting(seq)
        return out

    def _scheduled(self, seq: Sequence, num_new: int) -> ScheduledSequence:
        start = seq.num_computed_tokens
        return ScheduledSequence(
            seq,
            num_new,
            self._logits_wanted(seq, num_new),
            start=start,
            samples=start + num_new == seq.num_tokens,
        )

    @staticmethod
    def _is_blocked(seq: Sequence) -> bool:
        """n > 1 siblings wait while the first candidate computes the shared prompt."""
        leader = seq.wait_for
        if leader is None:
            return False
        if leader.status == SequenceStatus.RUNNING and not leader.is_prefill_done:
            return True
        seq.wait_for = None
        return False

    @staticmethod
    def _logits_wanted(seq: Sequence, num_new: int) -> LogitsWanted:
        start = seq.num_computed_tokens
        # Prompt logprobs still missing for positions inside this slice need every row.
        if (
            seq.wants_prompt_logprobs
            and start < seq.num_prompt_tokens - 1
            and len(seq.prompt_logprobs) < seq.num_prompt_tokens
        ):
            return LogitsWanted.ALL
        if start + num_new == seq.num_tokens:
            return LogitsWanted.LAST
        return LogitsWanted.NONE

    def update(self, out: SchedulerOutput) -> None:
        """Advance computed-token counts after the model ran `out` (before sampling results
        are appended), and publish newly full blocks to the prefix cache."""
        for item in out.scheduled:
            seq = item.seq
            if seq.status != SequenceStatus.RUNNING:
                continue
            seq.num_computed_tokens += item.num_new_tokens
            self.kv_cache.cache_computed_blocks(seq)
