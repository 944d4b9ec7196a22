"""Smoke-test `mono-llm serve` on a GPU machine with the real `openai` client.

    python scripts/gpu_server_smoke.py MODEL_DIR [--port 8011] [extra serve flags...]

Starts the server with dummy weights, waits for /ready, sends a completion, a streamed chat
completion and a batch of concurrent requests, prints what came back with HTTP-level timings,
then sends SIGTERM and checks the server drains and exits. Exit code 0 only if all of it worked.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time

import httpx
import openai


def main() -> int:
    model, *rest = sys.argv[1:]
    port = 8011
    serve = [
        sys.executable, "-m", "mono_llm.openai_api.cli", "serve", model,
        "--served-model-name", "bench", "--load-format", "dummy", "--dtype", "bfloat16",
        "--port", str(port), "--max-model-len", "4096", *rest,
    ]  # fmt: skip
    started = time.perf_counter()
    server = subprocess.Popen(serve)
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            if server.poll() is not None:
                print(f"server exited early with {server.returncode}")
                return 1
            try:
                if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        print(f"ready after {time.perf_counter() - started:.1f} s")
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="none")
        print("models:", [m.id for m in client.models.list().data])

        prompt_ids = list(
            range(1000, 1128)
        )  # 128 token ids; the bench folder has no real tokenizer
        t0 = time.perf_counter()
        completion = client.completions.create(
            model="bench",
            prompt=prompt_ids,
            max_tokens=128,
            temperature=0,
            extra_body={"ignore_eos": True, "min_tokens": 128},
        )
        elapsed = time.perf_counter() - t0
        assert completion.usage.completion_tokens == 128, completion.usage
        print(f"completion: 128 in / 128 out in {elapsed * 1000:.0f} ms over HTTP")

        t0 = time.perf_counter()
        first = None
        chunks = 0
        stream = client.chat.completions.create(
            model="bench",
            messages=[{"role": "user", "content": "Hello!"}],
            max_tokens=64,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True, "min_tokens": 64},
        )
        usage = None
        for chunk in stream:
            if first is None:
                first = time.perf_counter() - t0
            chunks += 1
            usage = chunk.usage or usage
        total = time.perf_counter() - t0
        assert usage is not None and usage.completion_tokens == 64, usage
        print(
            f"stream: first chunk {first * 1000:.0f} ms, {chunks} chunks, total {total * 1000:.0f} ms"
        )

        async def burst(n: int) -> list[float]:
            aclient = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="none")

            async def one(i: int) -> float:
                t = time.perf_counter()
                out = await aclient.completions.create(
                    model="bench",
                    prompt=[1000 + i] * 256,
                    max_tokens=128,
                    temperature=0,
                    extra_body={"ignore_eos": True, "min_tokens": 128},
                )
                assert out.usage.completion_tokens == 128
                return time.perf_counter() - t

            return await asyncio.gather(*(one(i) for i in range(n)))

        t0 = time.perf_counter()
        latencies = asyncio.run(burst(64))
        wall = time.perf_counter() - t0
        print(
            f"burst: 64 requests x 256 in / 128 out in {wall:.2f} s over HTTP "
            f"({64 * 128 / wall:.0f} output tok/s; median latency {statistics.median(latencies):.2f} s)"
        )
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
        # uvicorn re-raises the signal once it has shut down gracefully: -SIGTERM is a clean exit.
        print(f"server exited with {code} after SIGTERM")
        return 0 if code in (0, -signal.SIGTERM) else 1
    finally:
        if server.poll() is None:
            os.kill(server.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
