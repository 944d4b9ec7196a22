"""Summarise a step trace written with MONO_LLM_STEP_TRACE=TRACE.jsonl (engine/step_trace.py).

    python scripts/step_trace_summary.py TRACE.jsonl [--min-requests N] [--pid PID]

Per engine process (pid): steps by the runner's path (decode graph of size N, prefill graph,
eager, speculated, launched ahead) with mean / p50 / p99 wall time, the host phases of a step
on average, the step mix (decode-only, prefill-only, mixed), the steps that admitted requests
(and the prefix-cache tokens those started from), the time from a request's arrival to its
first scheduled step and to its first token, and the idle time between steps.

Then each wave of at least `--min-requests` requests (default 8) on its own: a burst starts at
a step before which nothing was running, e.g. each round of a benchmark. For each: how its
arrivals spread out, how many steps admitted them, and the engine's share of their time to
first token, to set beside what the client measured.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

PHASES = ("schedule", "execute", "sample", "wait", "update", "outputs")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def stats(values: list[float]) -> str:
    if not values:
        return "-"
    mean = sum(values) / len(values)
    return f"mean {mean:8.3f}  p50 {percentile(values, 50):8.3f}  p99 {percentile(values, 99):8.3f}"


def read_steps(path: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(start headers, step lines) of a trace file, in file order."""
    headers, steps = [], []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SystemExit(f"{path}:{number}: not JSON ({exc})") from None
            if "step" in record:
                steps.append(record)
            elif record.get("event") == "start":
                headers.append(record)
    return headers, steps


def path_key(step: dict[str, Any]) -> str:
    size = step.get("graph_size")
    return f"{step.get('path')}" + (f" {size}" if size is not None else "")


def kind(step: dict[str, Any]) -> str:
    if not step["prefill"]:
        return "decode-only"
    return "prefill-only" if not step["decode"] else "mixed"


def idle_gaps(steps: list[dict[str, Any]]) -> list[float]:
    """Seconds between the end of each step and the start of the next."""
    return [max(0.0, b["t"] - (a["t"] + a["dur_ms"] / 1e3)) for a, b in itertools.pairwise(steps)]


def split_bursts(
    steps: list[dict[str, Any]], idle_s: float | None = None
) -> list[list[dict[str, Any]]]:
    """Runs of steps that start where the engine had nothing running (every running sequence
    was admitted by the step: a new wave of requests), or after more than `idle_s` idle."""
    bursts: list[list[dict[str, Any]]] = []
    for step, gap in zip(steps, [float("inf"), *idle_gaps(steps)], strict=True):
        fresh = step["running"] == step["admitted"] and step["admitted"] > 0
        if not bursts or fresh or (idle_s is not None and gap > idle_s):
            bursts.append([])
        bursts[-1].append(step)
    return bursts


def arrivals(steps: list[dict[str, Any]]) -> list[float]:
    """Monotonic arrival times of the requests first scheduled in `steps` (each step's start
    plus its scheduling, less the request's wait)."""
    return sorted(
        s["t"] + (s.get("schedule_ms", 0.0) - q) / 1e3 for s in steps for q in s.get("queue_ms", ())
    )


def summarise(steps: list[dict[str, Any]], out: Any) -> None:
    span = steps[-1]["t"] + steps[-1]["dur_ms"] / 1e3 - steps[0]["t"]
    busy = sum(s["dur_ms"] for s in steps) / 1e3
    tokens = sum(s["tokens"] for s in steps)
    print(
        f"  {len(steps)} steps over {span:.3f} s, busy {busy:.3f} s ({100 * busy / max(span, 1e-9):.0f}%),"
        f" {tokens} new tokens",
        file=out,
    )
    print("  by path (step wall time, ms):", file=out)
    by_path: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in steps:
        by_path[path_key(s)].append(s)
    for key in sorted(by_path, key=lambda k: -len(by_path[k])):
        group = by_path[key]
        mean_tokens = sum(s["tokens"] for s in group) / len(group)
        mean_seqs = sum(s["seqs"] for s in group) / len(group)
        print(
            f"    {key:<18} {len(group):6d} steps  {stats([s['dur_ms'] for s in group])}"
            f"  tokens {mean_tokens:7.1f}  seqs {mean_seqs:6.1f}",
            file=out,
        )
    phase_means = []
    for phase in PHASES:
        values = [s.get(f"{phase}_ms", 0.0) for s in steps]
        phase_means.append(f"{phase} {sum(values) / len(values):.3f}")
    print("  host phases, mean ms: " + ", ".join(phase_means), file=out)
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in steps:
        by_kind[kind(s)].append(s)
    for name in ("decode-only", "prefill-only", "mixed"):
        group = by_kind.get(name, [])
        if group:
            print(
                f"  {name:<13} {len(group):6d} steps  {stats([s['dur_ms'] for s in group])}",
                file=out,
            )
    admitting = [s for s in steps if s["admitted"]]
    if admitting:
        admitted = sum(s["admitted"] for s in admitting)
        cached = sum(s["cached_tokens"] for s in admitting)
        new = sum(s["tokens"] for s in admitting)
        print(
            f"  admissions: {len(admitting)} steps admitted {admitted} sequences"
            f" ({admitted / len(admitting):.1f} per step), {cached} cached tokens;"
            f" those steps: {stats([s['dur_ms'] for s in admitting])} ms, {new / len(admitting):.1f}"
            " new tokens each",
            file=out,
        )
    ttft = [q for s in steps for q in s.get("ttft_ms", ())]
    if ttft:
        print(
            f"  arrival -> first token in the engine, ms: {stats(ttft)}  max {max(ttft):.3f}",
            file=out,
        )
    queue = [q for s in steps for q in s.get("queue_ms", ())]
    if queue:
        print(
            f"  arrival -> first scheduled step, ms: {stats(queue)}  max {max(queue):.3f}", file=out
        )
    gaps = [g * 1e3 for g in idle_gaps(steps)]
    if gaps:
        print(f"  between steps, ms: {stats(gaps)}  total {sum(gaps) / 1e3:.3f} s", file=out)
    if any(s.get("launched_next") or s.get("dropped_launches") for s in steps):
        launched = sum(1 for s in steps if s.get("launched_next"))
        dropped = sum(s.get("dropped_launches", 0) for s in steps)
        print(
            f"  async: {launched} steps launched the next, {dropped} launched steps dropped",
            file=out,
        )
    preempted = sum(s.get("preempted", 0) for s in steps)
    if preempted:
        print(f"  preemptions: {preempted}", file=out)


def burst_lines(index: int, steps: list[dict[str, Any]]) -> list[str]:
    span = steps[-1]["t"] + steps[-1]["dur_ms"] / 1e3 - steps[0]["t"]
    admitting = [s for s in steps if s["admitted"]]
    admitted = sum(s["admitted"] for s in admitting)
    cached = sum(s["cached_tokens"] for s in admitting)
    durs = [s["dur_ms"] for s in steps]
    cpus = [s.get("cpu_ms", 0.0) for s in steps]
    paths: dict[str, int] = defaultdict(int)
    for s in steps:
        paths[path_key(s)] += 1
    lines = [
        f"burst {index}: {len(steps)} steps over {span:.3f} s, {sum(s['tokens'] for s in steps)}"
        f" new tokens; admitted {admitted} in {len(admitting)} steps ({cached} cached tokens);"
        f" step p50 {percentile(durs, 50):.2f} ms (cpu {percentile(cpus, 50):.2f});"
        " paths " + ", ".join(f"{k} x{v}" for k, v in sorted(paths.items(), key=lambda kv: -kv[1]))
    ]
    times = arrivals(steps)
    if len(times) > 1:
        first = times[0]
        offsets = [1e3 * (t - first) for t in times]
        last_admission = admitting[-1]
        end = 1e3 * (last_admission["t"] + last_admission["dur_ms"] / 1e3 - first)
        lines.append(
            f"  arrivals spread over {offsets[-1]:.1f} ms (p50 {percentile(offsets, 50):.1f} ms"
            f" after the first); last admitting step ends at {end:.1f} ms"
        )
    queue = [q for s in steps for q in s.get("queue_ms", ())]
    ttft = [q for s in steps for q in s.get("ttft_ms", ())]
    if queue:
        lines.append(
            f"  arrival -> scheduled p50 {percentile(queue, 50):.2f} / max {max(queue):.2f} ms"
            + (
                f"; arrival -> first token p50 {percentile(ttft, 50):.2f} / p99"
                f" {percentile(ttft, 99):.2f} ms"
                if ttft
                else ""
            )
        )
    return lines


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trace", help="JSONL file written with MONO_LLM_STEP_TRACE")
    parser.add_argument("--pid", type=int, help="only this engine process")
    parser.add_argument(
        "--split-idle",
        type=float,
        metavar="S",
        help="also start a burst after more than S idle seconds",
    )
    parser.add_argument(
        "--min-requests",
        type=int,
        default=8,
        help="list the bursts that admitted at least this many requests (0: every burst)",
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    headers, steps = read_steps(args.trace)
    if not steps:
        print(f"{args.trace}: no steps", file=sys.stderr)
        return 1
    by_pid: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for s in steps:
        by_pid[s["pid"]].append(s)
    header_of = {h["pid"]: h for h in headers}
    for pid in sorted(by_pid):
        if args.pid is not None and pid != args.pid:
            continue
        engine_steps = sorted(by_pid[pid], key=lambda s: s["t"])
        header = header_of.get(pid, {})
        described = ", ".join(
            f"{k}={v}" for k, v in header.items() if k not in ("event", "pid", "t")
        )
        print(f"engine pid {pid}" + (f" ({described})" if described else ""))
        summarise(engine_steps, sys.stdout)
        for index, burst in enumerate(split_bursts(engine_steps, args.split_idle)):
            if sum(s["admitted"] for s in burst) >= args.min_requests:
                print("\n".join("  " + line for line in burst_lines(index, burst)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
