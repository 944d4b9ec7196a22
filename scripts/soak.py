"""Soak test: a real `mono-llm serve` on 127.0.0.1 under twice its scheduler's capacity for a
few minutes, with mixed traffic, then checks that it is whole again.

    python scripts/soak.py --minutes 2            (make soak SOAK_MINUTES=2)

Traffic, from 2 x max_num_seqs concurrent clients until the time is up: chat completions,
streamed chat, streamed completions the client abandons after a few chunks (cancellations),
embeddings, structured outputs (a JSON schema) and /tokenize. Every request has a timeout and
the run a hard deadline, so the soak always ends.

Checks (exit status 1 if any fails): every request got an answer that is a success, a
4xx, or a 503 with Retry-After (overload), each with an OpenAI-shaped error body; every
finished stream ended with [DONE]; afterwards no request is running or waiting and the KV
cache is empty (usage 0); the server's RSS is back near where it started. The summary
(requests sent, errors by status, time, RSS) is printed as JSON, and written to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

MAX_NUM_SEQS = 8
MAX_WAITING = 4
REQUEST_TIMEOUT_S = 60.0
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _gauges(base: str) -> dict[str, float]:
    values: dict[str, float] = collections.defaultdict(float)
    for line in httpx.get(f"{base}/metrics", timeout=30).text.splitlines():
        for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"):
            if line.startswith(f"mono_llm:{name}{{"):
                values[name] += float(line.rsplit(" ", 1)[1])
    return dict(values)


class Tally:
    def __init__(self) -> None:
        self.by_kind: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self.unclean: list[str] = []
        self.examples: dict[str, set[str]] = collections.defaultdict(set)
        self.sent = 0

    def record(self, kind: str, outcome: str, clean: bool, detail: str = "") -> None:
        self.by_kind[kind][outcome] += 1
        if detail and outcome != "503" and len(self.examples[outcome]) < 5:
            self.examples[outcome].add(f"{kind}: {detail[:200]}")
        if not clean:
            self.unclean.append(f"{kind}: {outcome} {detail[:300]}")


def _check_error(response: httpx.Response) -> bool:
    """A 4xx/503 is clean when its body is an OpenAI error (and a 503 says when to retry)."""
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    if not {"message", "type", "param", "code"} <= set(error):
        return False
    return response.status_code != 503 or "retry-after" in response.headers


async def _plain(client: httpx.AsyncClient, tally: Tally, kind: str, path: str, body: dict) -> None:
    response = await client.post(path, json=body)
    status = response.status_code
    if status == 200:
        if kind == "structured":
            choice = response.json()["choices"][0]
            text, finish = choice["message"]["content"], choice["finish_reason"]
            if finish == "stop":  # a complete answer must parse as the schema's object
                try:
                    json.loads(text)
                except json.JSONDecodeError as exc:
                    detail = f"{exc}: {text!r} usage={response.json().get('usage')}"
                    tally.record(kind, "invalid-json", False, detail)
                    return
        tally.record(kind, "200", True)
    else:
        tally.record(kind, str(status), status < 500 or (status == 503 and _check_error(response)),
                     response.text)  # fmt: skip
        if status < 500 and not _check_error(response):
            tally.record(kind, f"{status}-malformed", False, response.text)


async def _stream(
    client: httpx.AsyncClient, tally: Tally, kind: str, path: str, body: dict, cancel_after: int
) -> None:
    async with client.stream("POST", path, json=body) as response:
        if response.status_code != 200:
            await response.aread()
            clean = response.status_code < 500 or response.status_code == 503
            tally.record(kind, str(response.status_code), clean and _check_error(response),
                         response.text)  # fmt: skip
            return
        chunks = 0
        done = False
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            payload = json.loads(line[6:])
            if "error" in payload:
                tally.record(kind, "in-band-error", False, line)
                return
            chunks += 1
            if cancel_after and chunks >= cancel_after:
                tally.record(kind, "cancelled", True)
                return  # leaving the block closes the connection: the server must abort
        tally.record(kind, "200" if done else "no-[DONE]", done)


async def _one(client: httpx.AsyncClient, tally: Tally, rng: random.Random) -> None:
    choice = rng.random()
    messages = [{"role": "user", "content": f"Tell me about {rng.randint(0, 10**6)}."}]
    tally.sent += 1
    if choice < 0.2:
        body = {"model": "tiny-llama", "messages": messages, "max_tokens": rng.randint(4, 48)}
        await _plain(client, tally, "chat", "/v1/chat/completions", body)
    elif choice < 0.4:
        body = {"model": "tiny-llama", "messages": messages, "max_tokens": rng.randint(8, 64),
                "stream": True}  # fmt: skip
        await _stream(client, tally, "chat-stream", "/v1/chat/completions", body, 0)
    elif choice < 0.55:
        body = {"model": "tiny-llama", "prompt": messages[0]["content"], "max_tokens": 200,
                "ignore_eos": True, "stream": True}  # fmt: skip
        await _stream(client, tally, "cancelled-stream", "/v1/completions", body, rng.randint(1, 5))
    elif choice < 0.75:
        body = {"model": "all-MiniLM-L6-v2",
                "input": [f"sentence {rng.randint(0, 999)}" for _ in range(rng.randint(1, 8))]}  # fmt: skip
        await _plain(client, tally, "embeddings", "/v1/embeddings", body)
    elif choice < 0.9:
        body = {"model": "tiny-llama", "messages": messages, "max_tokens": 48,
                "response_format": {"type": "json_schema",
                                    "json_schema": {"name": "person", "schema": SCHEMA}}}  # fmt: skip
        await _plain(client, tally, "structured", "/v1/chat/completions", body)
    else:
        body = {"model": "tiny-llama", "messages": messages}
        await _plain(client, tally, "tokenize", "/tokenize", body)


async def _drive(base: str, seconds: float, concurrency: int, seed: int) -> Tally:
    tally = Tally()
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(base_url=base, timeout=REQUEST_TIMEOUT_S, limits=limits) as client:

        async def worker(index: int) -> None:
            rng = random.Random(seed + index)
            while time.monotonic() < deadline:
                try:
                    await _one(client, tally, rng)
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    tally.record("transport", type(exc).__name__, False, repr(exc))

        await asyncio.wait_for(
            asyncio.gather(*(worker(i) for i in range(concurrency))),
            seconds + REQUEST_TIMEOUT_S + 30,
        )
    return tally


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the JSON summary here")
    args = parser.parse_args()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mono_llm.openai_api.cli", "serve", "--host", "127.0.0.1",
               "--port", str(port), "--max-num-seqs", str(MAX_NUM_SEQS),
               "--max-waiting-requests", str(MAX_WAITING), "--disable-uvicorn-access-log",
               "--disable-log-stats"]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                print(server.stderr.read() if server.stderr else "", file=sys.stderr)
                print("the server did not start", file=sys.stderr)
                return 1
            try:
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        rss_start = _rss_mb(server.pid)
        rss_peak = rss_start
        concurrency = 2 * MAX_NUM_SEQS
        started = time.monotonic()
        seconds = args.minutes * 60

        async def run_and_sample() -> Tally:
            nonlocal rss_peak
            task = asyncio.create_task(_drive(base, seconds, concurrency, args.seed))
            while not task.done():
                rss_peak = max(rss_peak, _rss_mb(server.pid))
                await asyncio.sleep(1.0)
            return task.result()

        tally = asyncio.run(run_and_sample())
        elapsed = time.monotonic() - started
        time.sleep(3)  # aborted requests are freed at the next step boundary
        gauges = _gauges(base)
        rss_end = _rss_mb(server.pid)
        healthy = httpx.get(f"{base}/health", timeout=10).status_code == 200
        by_status: collections.Counter[str] = collections.Counter()
        for counts in tally.by_kind.values():
            by_status.update(counts)
        summary: dict[str, Any] = {
            "minutes": args.minutes,
            "concurrency": concurrency,
            "max_num_seqs": MAX_NUM_SEQS,
            "max_waiting_requests": MAX_WAITING,
            "requests_sent": tally.sent,
            "outcomes": dict(sorted(by_status.items())),
            "outcomes_by_kind": {k: dict(v) for k, v in sorted(tally.by_kind.items())},
            "unclean": tally.unclean[:20],
            "error_examples": {k: sorted(v) for k, v in sorted(tally.examples.items())},
            "elapsed_s": round(elapsed, 1),
            "rss_mb": {"start": round(rss_start), "peak": round(rss_peak), "end": round(rss_end)},
            "after": {"health": healthy, **gauges},
        }
        checks = {
            "every request finished or failed cleanly": not tally.unclean,
            "nothing running or waiting": gauges.get("num_requests_running", 1) == 0
            and gauges.get("num_requests_waiting", 1) == 0,
            "KV cache empty": gauges.get("kv_cache_usage_perc", 1) == 0,
            "RSS near its start": rss_end <= max(rss_start * 1.5, rss_start + 300),
            "healthy": healthy,
        }
        summary["checks"] = checks
        text = json.dumps(summary, indent=2)
        print(text)
        if args.out:
            args.out.write_text(text + "\n")
        return 0 if all(checks.values()) else 1
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        if os.environ.get("SOAK_SHOW_LOG") and server.stderr:
            print(server.stderr.read()[-5000:], file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
