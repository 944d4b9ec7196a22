"""A per-step trace of the engine loop, one JSON line per step, for profiling without a profiler.

Set `MONO_LLM_STEP_TRACE=/path/trace.jsonl` and every `EngineCore.step` (offline `LLM`, the
server's in-thread loop and its engine process alike) appends a line: when the step started,
how long its phases took on the host, what it scheduled (sequences, new tokens, prefill
slices and decodes, admissions and their prefix-cache hits), which path the model runner took
(a decode or prefill CUDA graph of some size, eager, or a step launched ahead), and the queue
lengths after scheduling. `scripts/step_trace_summary.py` reads it back.

Off by default, and then it costs the step loop one attribute check. When on, lines collect
in memory and reach the file in whole batches by one `write` on a descriptor opened for
appending, so several engines (models, data-parallel replicas, processes) may share one file
without tearing each other's lines. Batches go out every FLUSH_EVERY_LINES lines, whenever
the engine runs out of requests, on shutdown and at exit.

Fields of a step line (times in milliseconds; `t` in seconds of `time.monotonic()`, which is
shared by the processes of one machine):
  step, pid, t, dur_ms            step number, process, start time, wall time of the step
  schedule_ms                     scheduler + flattening the slices into the batch
  execute_ms                      the runner's `execute`: host preparation and the launch (on
                                  CUDA the GPU work is asynchronous; on CPU it is the compute)
  sample_ms, wait_ms              sampler launch, waiting for the sampled tokens on the host;
                                  absent when the step sampled nothing
  update_ms                       per-token bookkeeping (stops, detokenizer) and finishing
                                  pooled sequences
  outputs_ms                      building the step's `RequestOutput`s
  cpu_ms                          CPU time of the stepping thread during the step: well below
                                  dur_ms, the thread waited (on the device, or for a core)
  seqs, tokens                    scheduled sequences and new tokens
  prefill, decode                 slices inside the prompt (incl. a prompt's first token) and
                                  the rest (one generated token each)
  admitted, cached_tokens         sequences admitted from the waiting queue, and the
                                  prefix-cache tokens they start from
  context_tokens, max_seq_len     tokens already in the KV cache over all slices; the longest
                                  context after the step
  path, graph_size                the runner's path: "decode_graph", "prefill_graph", "eager",
                                  "speculated" (staged while the previous step ran) or
                                  "launched" (already running on the GPU: async scheduling)
  launched_next                   this step started the next decode step before returning
  dropped_launches                steps launched ahead whose results were thrown away (a
                                  request arrived or left) since the previous line
  waiting, running, preempted     queue lengths after scheduling; preempted this step
  queue_ms                        for each request first scheduled in this step: time from
                                  its arrival (the API process's clock) to this step
  ttft_ms                         for each request whose first token this step sampled: time
                                  from its arrival to that token (the engine's share of the
                                  time to first token a client measures)
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mono_llm.core.engine.scheduler import SchedulerOutput

ENV_VAR = "MONO_LLM_STEP_TRACE"
# Lines kept in memory before one write (a few hundred kB at most).
FLUSH_EVERY_LINES = 512


@dataclass(slots=True)
class StepPhases:
    """Phase boundaries the generation step marks while a trace is on."""

    marks: list[tuple[str, float]] = field(default_factory=list)
    launched_next: bool = False
    cpu_s: float = 0.0  # CPU time of the stepping thread over the step

    def mark(self, name: str) -> None:
        """End of phase `name` (perf_counter seconds)."""
        self.marks.append((name, time.perf_counter()))


def step_record(
    step: int,
    t: float,
    start: float,
    phases: StepPhases,
    sched: SchedulerOutput,
    queues: tuple[int, int],
    runner: Any,
    queue_s: list[float],
    ttft_s: list[float],
    dropped_launches: int,
) -> dict[str, Any]:
    """One step's line (see the module docstring for the fields). `start` and the marks are
    perf_counter seconds; `t` is the step's start on the monotonic clock; `queues` the
    waiting and running sequences after scheduling."""
    record: dict[str, Any] = {"step": step, "pid": os.getpid(), "t": round(t, 6)}
    previous = start
    for name, at in phases.marks:
        record[f"{name}_ms"] = round((at - previous) * 1e3, 3)
        previous = at
    record["dur_ms"] = round((previous - start) * 1e3, 3)
    record["cpu_ms"] = round(phases.cpu_s * 1e3, 3)
    prefill = tokens = context = max_seq_len = 0
    for item in sched.scheduled:
        tokens += item.num_new_tokens
        context += item.start
        max_seq_len = max(max_seq_len, item.start + item.num_new_tokens)
        if item.start < item.seq.num_prompt_tokens:
            prefill += 1
    num_seqs = len(sched.scheduled)
    record.update(
        seqs=num_seqs,
        tokens=tokens,
        prefill=prefill,
        decode=num_seqs - prefill,
        admitted=sched.num_admitted,
        cached_tokens=sched.admitted_cached_tokens,
        context_tokens=context,
        max_seq_len=max_seq_len,
        path=getattr(runner, "last_step_path", None),
        graph_size=getattr(runner, "last_graph_size", None),
        launched_next=phases.launched_next,
        dropped_launches=dropped_launches,
        waiting=queues[0],
        running=queues[1],
        preempted=len(sched.preempted),
        queue_ms=[round(q * 1e3, 3) for q in queue_s],
        ttft_ms=[round(q * 1e3, 3) for q in ttft_s],
    )
    return record


class StepTrace:
    """Buffered appender of step lines to one JSONL file."""

    def __init__(self, path: str, **header: Any) -> None:
        self.path = path
        self.pid = os.getpid()
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._lines: list[str] = []
        self._lock = threading.Lock()  # close() may run from atexit on another thread
        self.write({"event": "start", "pid": self.pid, "t": time.monotonic(), **header})
        atexit.register(self.close)

    @classmethod
    def from_environment(cls, **header: Any) -> StepTrace | None:
        """The trace `MONO_LLM_STEP_TRACE` asks for, or None when it is unset or empty."""
        path = os.environ.get(ENV_VAR, "").strip()
        return cls(path, **header) if path else None

    def write(self, record: dict[str, Any]) -> None:
        """Queue one line; written out every FLUSH_EVERY_LINES lines and on close."""
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            if self._fd is None:  # closed (shutdown): later steps are not traced
                return
            self._lines.append(line)
            if len(self._lines) >= FLUSH_EVERY_LINES:
                self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if self._fd is None or not self._lines:
            return
        data = "".join(self._lines).encode()
        self._lines.clear()
        view = memoryview(data)
        while view:  # one write in practice; a short write (full disk, signal) continues
            written = os.write(self._fd, view)
            view = view[written:]

    def close(self) -> None:
        """Write what is buffered and close the file (idempotent)."""
        with self._lock:
            if self._fd is None:
                return
            try:
                self._flush_locked()
            finally:
                os.close(self._fd)
                self._fd = None
        atexit.unregister(self.close)

    @property
    def closed(self) -> bool:
        return self._fd is None
