"""`mono-llm bench serve|throughput|latency|engine|kernels ...`: the benchmarks behind one command.

The benchmarks themselves live beside what they measure (`mono_llm.openai_api.bench_serve` for
HTTP load against any OpenAI-compatible server, `mono_llm.core.bench` for the offline engine
workloads, `mono_llm.kernels.bench` for the kernel micro-benchmarks), so a researcher with only
mono-llm-kernels installed can still run `python -m mono_llm.kernels.bench`; this subcommand
only forwards the remaining arguments to them.
"""

from __future__ import annotations

import argparse
import importlib

_TARGETS = {
    "serve": (
        "mono_llm.openai_api.bench_serve:main",
        "HTTP load on an OpenAI-compatible server: TTFT, ITL, E2E latency and output tok/s "
        "(vllm bench serve's flags)",
    ),
    "throughput": (
        "mono_llm.core.bench:main_throughput",
        "offline output tok/s of many requests (vllm bench throughput's flags)",
    ),
    "latency": (
        "mono_llm.core.bench:main_latency",
        "offline time to first token and decode speed of one batch (vllm bench latency's flags)",
    ),
    "engine": (
        "mono_llm.core.bench",
        "offline engine workloads A/B/C (throughput, decode latency, prefill-heavy)",
    ),
    "kernels": (
        "mono_llm.kernels.bench",
        "kernel micro-benchmarks vs the roofline and torch (needs a CUDA device)",
    ),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="run a benchmark (engine workloads or kernels)",
        description="Run a benchmark; arguments after the target go to it "
        "(`mono-llm bench engine --help`).",
    )
    parser.add_argument(
        "target",
        choices=sorted(_TARGETS),
        help="; ".join(f"{name}: {text}" for name, (_, text) in sorted(_TARGETS.items())),
    )
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    target, _ = _TARGETS[args.target]
    module_name, _, function = target.partition(":")
    module = importlib.import_module(module_name)
    return int(getattr(module, function or "main")(list(args.args)) or 0)
