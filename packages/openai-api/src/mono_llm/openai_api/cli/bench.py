"""`mono-llm bench engine|kernels ...`: the project's benchmarks behind one command.

The benchmarks themselves live beside what they measure (`mono_llm.core.bench` for the offline
engine workloads A/B/C, `mono_llm.kernels.bench` for the kernel micro-benchmarks), so a
researcher with only mono-llm-kernels installed can still run `python -m mono_llm.kernels.bench`;
this subcommand only forwards the remaining arguments to them.
"""

from __future__ import annotations

import argparse
import importlib

_TARGETS = {
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
    module_name, _ = _TARGETS[args.target]
    module = importlib.import_module(module_name)
    return int(module.main(list(args.args)) or 0)
