"""`mono-llm bench serve`: load any OpenAI-compatible server and report what its users feel.

    mono-llm bench serve --base-url http://127.0.0.1:8000 --model NAME \\
        --num-prompts 200 --max-concurrency 64 --random-input-len 256 --random-output-len 128

Flags follow `vllm bench serve`, so one command line drives vLLM and mono-llm alike. Prompts
are random token ids (`--dataset-name random`, the default; no prefix-cache hits between
requests) or random words (`--prompt-kind text`), sent as streamed /v1/completions with
`ignore_eos` and `min_tokens`, so every request produces exactly --random-output-len tokens.
Requests start at --request-rate per second (Poisson arrivals; inf: all at once), at most
--max-concurrency in flight. Reported: time to first token (TTFT), inter-token latency (ITL:
the gaps between streamed chunks), end-to-end latency (E2E), each as mean / p50 / p99 in ms,
and output tok/s over the whole run; `--output-json` writes them with every setting.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "it",
    "an",
    "be",
    "this",
    "which",
    "or",
]


@dataclass(slots=True)
class RequestResult:
    ok: bool
    ttft_s: float = 0.0
    e2e_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    output_tokens: int = 0
    error: str = ""


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": math.nan, "p50": math.nan, "p99": math.nan}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    return {
        "mean": 1000 * statistics.fmean(ordered),
        "p50": 1000 * pick(0.50),
        "p99": 1000 * pick(0.99),
    }


def make_prompts(args: argparse.Namespace) -> list[Any]:
    rng = random.Random(args.seed)
    low, high = args.token_id_range
    if args.prompt_kind == "token-ids":
        return [
            [rng.randrange(low, high) for _ in range(args.random_input_len)]
            for _ in range(args.num_prompts)
        ]
    return [
        " ".join(rng.choice(_WORDS) for _ in range(args.random_input_len))
        for _ in range(args.num_prompts)
    ]


async def _one(client: Any, args: argparse.Namespace, prompt: Any) -> RequestResult:
    import httpx

    body = {
        "model": args.model,
        "prompt": prompt,
        "max_tokens": args.random_output_len,
        "min_tokens": args.random_output_len,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    stamps: list[float] = []
    tokens = 0
    try:
        async with client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")[:200]
                return RequestResult(False, error=f"HTTP {response.status_code}: {text}")
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                data = json.loads(line[6:])
                if data.get("error"):
                    return RequestResult(False, error=str(data["error"])[:200])
                if data.get("choices"):
                    stamps.append(time.perf_counter())
                if data.get("usage"):
                    tokens = int(data["usage"].get("completion_tokens") or 0)
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        return RequestResult(False, error=repr(exc)[:200])
    if not stamps:
        return RequestResult(False, error="no tokens streamed")
    return RequestResult(
        True,
        ttft_s=stamps[0] - start,
        e2e_s=stamps[-1] - start,
        itl_s=[b - a for a, b in itertools.pairwise(stamps)],
        output_tokens=tokens or len(stamps),
    )


async def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Send every prompt under the rate and concurrency limits; the summary as a dict."""
    import httpx

    prompts = make_prompts(args)
    limit = args.max_concurrency or len(prompts)
    gate = asyncio.Semaphore(limit)
    rng = random.Random(args.seed + 1)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=limit + 8, max_keepalive_connections=limit + 8)
    async with httpx.AsyncClient(
        base_url=args.base_url, timeout=args.timeout, headers=headers, limits=limits
    ) as client:
        for _ in range(args.num_warmups):
            await _one(client, args, prompts[0])

        async def gated(prompt: Any) -> RequestResult:
            async with gate:
                return await _one(client, args, prompt)

        tasks = []
        start = time.perf_counter()
        for prompt in prompts:
            tasks.append(asyncio.create_task(gated(prompt)))
            if math.isfinite(args.request_rate):
                await asyncio.sleep(rng.expovariate(args.request_rate))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
    done = [r for r in results if r.ok]
    output_tokens = sum(r.output_tokens for r in done)
    summary: dict[str, Any] = {
        "base_url": args.base_url,
        "model": args.model,
        "num_prompts": len(prompts),
        "completed": len(done),
        "failed": len(results) - len(done),
        "errors": sorted({r.error for r in results if not r.ok})[:5],
        "max_concurrency": args.max_concurrency,
        "request_rate": args.request_rate,
        "random_input_len": args.random_input_len,
        "random_output_len": args.random_output_len,
        "prompt_kind": args.prompt_kind,
        "duration_s": duration,
        "total_output_tokens": output_tokens,
        "output_throughput_tok_s": output_tokens / duration if duration > 0 else math.nan,
        "request_throughput_req_s": len(done) / duration if duration > 0 else math.nan,
        "ttft_ms": _percentiles([r.ttft_s for r in done]),
        "itl_ms": _percentiles([gap for r in done for gap in r.itl_s]),
        "e2e_ms": _percentiles([r.e2e_s for r in done]),
    }
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"requests: {summary['completed']} completed, {summary['failed']} failed "
        f"in {summary['duration_s']:.2f} s",
        f"output tok/s: {summary['output_throughput_tok_s']:.1f}",
    ]
    for key, label in (("ttft_ms", "TTFT"), ("itl_ms", "ITL"), ("e2e_ms", "E2E")):
        stats = summary[key]
        lines.append(
            f"{label} ms: mean {stats['mean']:.2f}, p50 {stats['p50']:.2f}, p99 {stats['p99']:.2f}"
        )
    for error in summary["errors"]:
        lines.append(f"error: {error}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mono-llm bench serve", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--base-url", default="http://127.0.0.1:8000", help="server root URL")
    parser.add_argument("--model", required=True, help="the `model` field of each request")
    parser.add_argument("--num-prompts", type=int, default=100)
    parser.add_argument(
        "--max-concurrency", type=int, default=None, help="requests in flight at most"
    )
    parser.add_argument(
        "--request-rate",
        type=float,
        default=math.inf,
        help="new requests per second, Poisson arrivals (default inf: all at once)",
    )
    parser.add_argument("--random-input-len", type=int, default=1024)
    parser.add_argument("--random-output-len", type=int, default=128)
    parser.add_argument(
        "--dataset-name", default="random", choices=["random"], help="only random prompts"
    )
    parser.add_argument(
        "--prompt-kind",
        default="token-ids",
        choices=["token-ids", "text"],
        help="token-id prompts (exact input length) or random words",
    )
    parser.add_argument(
        "--token-id-range",
        type=int,
        nargs=2,
        default=(100, 1200),
        metavar=("LOW", "HIGH"),
        help="random token ids are drawn from [LOW, HIGH)",
    )
    parser.add_argument("--num-warmups", type=int, default=1, help="untimed requests first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--timeout", type=float, default=600.0, help="per request, seconds")
    parser.add_argument("--output-json", default=None, help="write the summary here")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.num_prompts < 1 or args.random_input_len < 1 or args.random_output_len < 1:
        parser.error("--num-prompts, --random-input-len and --random-output-len must be >= 1")
    if args.max_concurrency is not None and args.max_concurrency < 1:
        parser.error("--max-concurrency must be >= 1")
    if not args.request_rate > 0:
        parser.error("--request-rate must be > 0 (inf: all at once)")
    summary = asyncio.run(run_benchmark(args))
    print(format_summary(summary), flush=True)
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(summary, indent=2))
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
