"""Offline engine benchmarks: workloads A, B and C (docs/benchmarks.md gives them and the method).

    python -m mono_llm.core.bench --model DIR --workload A|B|C|all \
        [--load-format dummy] [--dtype bfloat16] [--runs 3] [--json out.json]

Every workload goes through the offline `LLM` API with token-id prompts (fresh random ids per
run, so no prefix-cache hits), temperature 0, ignore_eos and min_tokens = max_tokens, so each
request produces exactly the requested number of tokens. One warm-up `generate` (same prompt
shapes, fewer output tokens unless --full-warmup) precedes the timed runs; the wall time of one
`generate` call is timed and the median of --runs is reported.

A: 1000 requests x 512 in / 256 out (throughput: output and total tok/s)
B: 1 request, 128 in / 512 out (latency: time to first token, decode tok/s = 511 / (total - TTFT))
C: 64 requests x 1024 in / 128 out (prefill-heavy: output and total tok/s)
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mono_llm.core.testing import fixture_path


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    num_requests: int
    input_len: int
    output_len: int
    description: str


WORKLOADS = {
    "A": Workload("A", 1000, 512, 256, "1000 requests x 512 in / 256 out (throughput)"),
    "B": Workload("B", 1, 128, 512, "1 request, 128 in / 512 out (decode latency)"),
    "C": Workload("C", 64, 1024, 128, "64 requests x 1024 in / 128 out (prefill-heavy)"),
}

# Tokenizer files; a model folder without them (a config-only benchmark shape) borrows the
# tiny-llama fixture's tokenizer: prompts are token ids and outputs are not detokenized, so the
# tokenizer is never asked to encode or decode anything.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


@dataclass(slots=True)
class WorkloadResult:
    workload: str
    description: str
    num_requests: int
    input_len: int
    output_len: int
    runs_s: list[float] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    output_tok_s: float = 0.0
    total_tok_s: float = 0.0
    ttft_ms: float | None = None
    decode_tok_s: float | None = None
    decode_ms_per_token: float | None = None


def random_prompts(workload: Workload, vocab_size: int, seed: int) -> list[dict[str, list[int]]]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (workload.num_requests, workload.input_len), generator=gen)
    return [{"prompt_token_ids": row} for row in ids.tolist()]


def sampling_params(max_tokens: int) -> Any:
    from mono_llm.core import SamplingParams

    return SamplingParams(
        temperature=0.0,
        max_tokens=max_tokens,
        min_tokens=max_tokens,
        ignore_eos=True,
        detokenize=False,
    )


def run_workload(
    llm: Any, workload: Workload, runs: int, full_warmup: bool, seed: int
) -> WorkloadResult:
    vocab = llm.llm_engine.vocab_size
    warm_tokens = workload.output_len if full_warmup else min(workload.output_len, 16)
    llm.generate(
        random_prompts(workload, vocab, seed), sampling_params(warm_tokens), use_tqdm=False
    )
    result = WorkloadResult(
        workload.name,
        workload.description,
        workload.num_requests,
        workload.input_len,
        workload.output_len,
    )
    for run in range(runs):
        prompts = random_prompts(workload, vocab, seed + 1 + run)
        params = sampling_params(workload.output_len)
        _synchronize()
        start = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        _synchronize()
        elapsed = time.perf_counter() - start
        produced = sum(len(o.outputs[0].token_ids) for o in outputs)
        expected = workload.num_requests * workload.output_len
        if produced != expected:
            raise RuntimeError(f"workload {workload.name}: {produced} tokens, expected {expected}")
        result.runs_s.append(elapsed)
        if workload.num_requests == 1:
            metrics = outputs[0].metrics
            if metrics is None or metrics.first_token_time is None:
                raise RuntimeError("RequestOutput.metrics.first_token_time is needed for TTFT")
            result.ttft_s.append(metrics.first_token_time - metrics.arrival_time)
    result.elapsed_s = statistics.median(result.runs_s)
    out_tokens = workload.num_requests * workload.output_len
    in_tokens = workload.num_requests * workload.input_len
    result.output_tok_s = out_tokens / result.elapsed_s
    result.total_tok_s = (out_tokens + in_tokens) / result.elapsed_s
    if result.ttft_s:
        decode = [
            (workload.output_len - 1) / (total - ttft)
            for total, ttft in zip(result.runs_s, result.ttft_s, strict=True)
        ]
        result.ttft_ms = 1000 * statistics.median(result.ttft_s)
        result.decode_tok_s = statistics.median(decode)
        result.decode_ms_per_token = 1000 / result.decode_tok_s
    return result


def runner_timing(runner: Any, context_len: int = 640) -> dict[str, float]:
    """Milliseconds of single model steps, without the scheduler and sampler around them.

    Run before any request so no prefix-cache entry points at the blocks it writes. Decode
    steps attend over `context_len` cached tokens (zeros: attention cost does not depend on the
    values). "step" is `ModelRunner.execute` plus a device sync (host preparation included);
    "graph" is the replay alone, timed with CUDA events.
    """
    from mono_llm.core.worker.batch import LogitsWanted, ModelBatch, SequenceSlice

    per_seq = -(-(context_len + 1) // runner.block_size)
    timings: dict[str, float] = {}

    def timed(batch: ModelBatch, repeats: int) -> float:
        for _ in range(3):
            runner.execute(batch)
        samples = []
        for _ in range(repeats):
            _synchronize()
            start = time.perf_counter()
            runner.execute(batch)
            _synchronize()
            samples.append(time.perf_counter() - start)
        return 1000 * statistics.median(samples)

    for size in (1, 8, 64, 256):
        if size > runner.max_num_seqs or size * per_seq > runner.num_blocks:
            continue
        batch = ModelBatch(
            [
                SequenceSlice([1], context_len, list(range(i * per_seq, (i + 1) * per_seq)))
                for i in range(size)
            ]
        )
        timings[f"decode_bs{size}_step_ms"] = timed(batch, 30)
        graphs = runner.decode_graphs
        if size in graphs and torch.cuda.is_available():
            start_event = torch.cuda.Event(enable_timing=True)
            end_event = torch.cuda.Event(enable_timing=True)
            start_event.record()
            for _ in range(20):
                graphs[size].replay()
            end_event.record()
            end_event.synchronize()
            timings[f"decode_bs{size}_graph_ms"] = start_event.elapsed_time(end_event) / 20
    for num_seqs, length in ((1, 128), (8, 1024)):
        blocks = -(-length // runner.block_size)
        if num_seqs * length > runner.max_num_tokens or num_seqs * blocks > runner.num_blocks:
            continue
        batch = ModelBatch(
            [
                SequenceSlice(
                    [1] * length, 0, list(range(i * blocks, (i + 1) * blocks)), LogitsWanted.LAST
                )
                for i in range(num_seqs)
            ]
        )
        timings[f"prefill_{num_seqs}x{length}_step_ms"] = timed(batch, 10)
    return timings


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _has_tokenizer(model: Path) -> bool:
    return any((model / name).is_file() for name in _TOKENIZER_FILES)


def format_table(results: list[WorkloadResult]) -> str:
    header = (
        "| workload | elapsed s (median) | output tok/s | total tok/s | TTFT ms | decode tok/s |\n"
        "|---|---|---|---|---|---|"
    )
    rows = []
    for r in results:
        ttft = f"{r.ttft_ms:.1f}" if r.ttft_ms is not None else "-"
        decode = (
            f"{r.decode_tok_s:.1f} ({r.decode_ms_per_token:.2f} ms/tok)"
            if r.decode_tok_s is not None
            else "-"
        )
        rows.append(
            f"| {r.workload}: {r.description} | {r.elapsed_s:.2f} | {r.output_tok_s:,.0f} | "
            f"{r.total_tok_s:,.0f} | {ttft} | {decode} |"
        )
    return "\n".join([header, *rows])


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {"torch": torch.__version__, "python": sys.version.split()[0]}
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name()
    else:
        env["device"] = "cpu"
    return env


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    """The engine settings every offline benchmark takes (a subset of EngineArgs)."""
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--load-format", default="auto", choices=["auto", "safetensors", "dummy"])
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-num-seqs", type=int, default=None)
    parser.add_argument("--max-num-batched-tokens", type=int, default=None)
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--kv-cache-memory-gib", type=float, default=None)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument(
        "--cuda-graph-max-prefill-tokens",
        type=int,
        default=None,
        help="EngineArgs.cuda_graph_max_prefill_tokens (default: the engine's)",
    )
    parser.add_argument(
        "--overlap-decode-prepare",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="EngineArgs.overlap_decode_prepare (default: the engine's)",
    )


def build_llm(args: argparse.Namespace) -> Any:
    """An offline LLM from the flags of `add_engine_flags`."""
    from mono_llm.core import LLM

    model = Path(args.model)
    tokenizer = None if _has_tokenizer(model) else str(fixture_path("tiny-llama"))
    llm = LLM(
        model=str(model),
        tokenizer=tokenizer,
        dtype=args.dtype,
        load_format=args.load_format,
        device=args.device,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization,
        kv_cache_memory_gib=args.kv_cache_memory_gib,
        enforce_eager=args.enforce_eager,
        seed=args.seed,
        tensor_parallel_size=args.tensor_parallel_size,
        **{
            name: value
            for name in ("cuda_graph_max_prefill_tokens", "overlap_decode_prepare")
            if (value := getattr(args, name)) is not None
        },
    )
    return llm


def _custom_main(argv: list[str] | None, kind: str) -> int:
    """`throughput` (vllm bench throughput's flags) or `latency` (vllm bench latency's)."""
    parser = argparse.ArgumentParser(
        prog=f"mono-llm bench {kind}",
        description="Offline output tok/s of many requests at once (one generate call)"
        if kind == "throughput"
        else "Offline latency of one batch: time to first token and decode tok/s",
    )
    parser.add_argument("--model", required=True, help="HF-format model folder")
    if kind == "throughput":
        parser.add_argument("--num-prompts", type=int, default=1000)
    else:
        parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--input-len", type=int, default=512 if kind == "throughput" else 128)
    parser.add_argument("--output-len", type=int, default=256 if kind == "throughput" else 512)
    parser.add_argument(
        "--num-iters", type=int, default=3, help="timed runs; the median is reported"
    )
    parser.add_argument("--full-warmup", action="store_true", help="warm up with the full output")
    add_engine_flags(parser)
    parser.add_argument("--output-json", default=None, help="write the result here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    count = args.num_prompts if kind == "throughput" else args.batch_size
    workload = Workload(
        kind,
        count,
        args.input_len,
        args.output_len,
        f"{count} x {args.input_len} in / {args.output_len} out",
    )
    llm = build_llm(args)
    result = run_workload(llm, workload, args.num_iters, args.full_warmup, args.seed)
    print(format_table([result]), flush=True)
    if args.output_json:
        report = {"model": args.model, "environment": environment(), "result": asdict(result)}
        Path(args.output_json).write_text(json.dumps(report, indent=2))
    return 0


def main_throughput(argv: list[str] | None = None) -> int:
    return _custom_main(argv, "throughput")


def main_latency(argv: list[str] | None = None) -> int:
    return _custom_main(argv, "latency")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="HF-format model folder")
    parser.add_argument(
        "--workload",
        default="all",
        help="A, B, C, a comma list, or all; NAME:RUNS overrides --runs for one (e.g. B,C,A:1)",
    )
    add_engine_flags(parser)
    parser.add_argument("--runs", type=int, default=3, help="timed runs; the median is reported")
    parser.add_argument("--full-warmup", action="store_true", help="warm up with the full output")
    parser.add_argument("--num-requests", type=int, default=None, help="override (smoke tests)")
    parser.add_argument(
        "--runner-timing", action="store_true", help="also time bare model steps (no engine)"
    )
    parser.add_argument("--json", default="bench-results.json", help="where to write results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    specs = list(WORKLOADS) if args.workload == "all" else args.workload.upper().split(",")
    names = [spec.split(":")[0] for spec in specs]
    runs = [int(spec.split(":")[1]) if ":" in spec else args.runs for spec in specs]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; choose from {', '.join(WORKLOADS)} or all")
    model = Path(args.model)
    start = time.perf_counter()
    llm = build_llm(args)
    startup = time.perf_counter() - start
    print(f"engine start-up: {startup:.1f} s", flush=True)
    timings = runner_timing(llm.llm_engine.model_runner) if args.runner_timing else {}
    for key, value in timings.items():
        print(f"runner {key}: {value:.3f}", flush=True)
    results = []
    for name, workload_runs in zip(names, runs, strict=True):
        workload = WORKLOADS[name]
        if args.num_requests is not None:
            workload = Workload(
                workload.name,
                args.num_requests,
                workload.input_len,
                workload.output_len,
                workload.description + f" [num_requests={args.num_requests}]",
            )
        result = run_workload(llm, workload, workload_runs, args.full_warmup, args.seed)
        print(format_table([result]).splitlines()[-1], flush=True)
        results.append(result)
        report = {
            "model": str(model),
            "load_format": args.load_format,
            "dtype": args.dtype,
            "tensor_parallel_size": args.tensor_parallel_size,
            "startup_s": startup,
            "runner_timing_ms": timings,
            "environment": environment(),
            "results": [asdict(r) for r in results],
        }
        Path(args.json).write_text(json.dumps(report, indent=2))  # after each workload
    print(format_table(results))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
