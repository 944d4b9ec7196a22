"""The `mono-llm` command line: `mono-llm <subcommand> ...`.

Each subcommand lives in its own module exposing `register(subparsers)`, which adds its
parser and sets `handler` (a callable taking the parsed namespace and returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from mono_llm.openai_api._version import __version__

# Modules under mono_llm.openai_api.cli that contribute subcommands, in --help order.
SUBCOMMAND_MODULES: tuple[str, ...] = ("serve", "bench", "realtime_client")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mono-llm",
        description="mono-llm: LLM inference engine and OpenAI-compatible server.",
    )
    parser.add_argument("--version", action="version", version=f"mono-llm {__version__}")
    subparsers = parser.add_subparsers(dest="subcommand", metavar="<subcommand>")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"mono_llm.openai_api.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    return int(handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
