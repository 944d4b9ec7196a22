"""AsyncLLM: concurrent streams, output kinds, cancellation, abort, errors, shutdown."""

from __future__ import annotations

import asyncio
import time

import pytest

from mono_llm.core import (
    AsyncEngineArgs,
    AsyncLLM,
    EngineDeadError,
    PromptTooLongError,
    RequestOutputKind,
    SamplingParams,
)
from mono_llm.core.testing import fixture_path

NUM_BLOCKS = 256


def _engine(**kwargs) -> AsyncLLM:
    args = AsyncEngineArgs(
        model=str(fixture_path("tiny-llama")),
        max_model_len=256,
        num_gpu_blocks_override=NUM_BLOCKS,
        disable_log_stats=True,
        engine_process=False,  # these tests read the engine's own state
        **kwargs,
    )
    return AsyncLLM.from_engine_args(args)


@pytest.fixture(scope="module")
def engine():
    engine = _engine()
    yield engine
    engine.shutdown()


async def _wait_idle(engine: AsyncLLM, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while engine.engine.has_unfinished_requests() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


def test_fifty_concurrent_streams_interleave_and_finish(engine: AsyncLLM) -> None:
    greedy = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    prompts = [{"prompt_token_ids": [0, 100 + i, 200 + i, 300]} for i in range(50)]
    arrivals: list[str] = []

    async def stream(i: int) -> list[int]:
        tokens: list[int] = []
        params = greedy.clone(output_kind=RequestOutputKind.DELTA)
        async for out in engine.generate(prompts[i], params, f"req-{i}"):
            arrivals.append(out.request_id)
            tokens.extend(out.outputs[0].token_ids)
            last = out
        assert last.finished and last.outputs[0].finish_reason == "length"
        return tokens

    async def main() -> list[list[int]]:
        return await asyncio.gather(*(stream(i) for i in range(50)))

    results = asyncio.run(main())
    assert all(len(tokens) == 16 for tokens in results)
    # Streams interleave: request 0's last output comes after other requests' first ones.
    assert arrivals.index("req-1") < len(arrivals) - 1 - arrivals[::-1].index("req-0")
    assert len(arrivals) > 2 * 50  # streamed, not one final output each

    # Each stream's tokens are what the request produces on its own.
    async def alone(i: int) -> list[int]:
        outs = [out async for out in engine.generate(prompts[i], greedy, f"alone-{i}")]
        return outs[-1].outputs[0].token_ids

    for i in (0, 17, 49):
        assert asyncio.run(alone(i)) == results[i]
    assert engine.get_stats().kv_cache_usage == 0.0


def test_output_kinds(engine: AsyncLLM) -> None:
    prompt = "the output kinds"
    base = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)

    async def collect(kind: RequestOutputKind, request_id: str) -> list:
        return [
            out async for out in engine.generate(prompt, base.clone(output_kind=kind), request_id)
        ]

    cumulative = asyncio.run(collect(RequestOutputKind.CUMULATIVE, "cum"))
    delta = asyncio.run(collect(RequestOutputKind.DELTA, "delta"))
    final = asyncio.run(collect(RequestOutputKind.FINAL_ONLY, "final"))
    full = cumulative[-1].outputs[0]
    assert len(final) == 1 and final[0].finished
    # One output per step, unless a slow consumer (a loaded machine) let outputs pile up:
    # AsyncLLM then merges them, so counts grow strictly but may skip steps.
    counts = [len(o.outputs[0].token_ids) for o in cumulative]
    assert counts == sorted(set(counts)) and counts[-1] == 12 and cumulative[-1].finished
    assert not any(o.finished for o in cumulative[:-1])
    assert "".join(o.outputs[0].text for o in delta) == full.text == final[0].outputs[0].text
    assert [t for o in delta for t in o.outputs[0].token_ids] == full.token_ids
    assert all(o.prompt_token_ids for o in delta)


def test_consumer_cancellation_aborts_and_frees_blocks(engine: AsyncLLM) -> None:
    params = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)

    async def main() -> None:
        started = asyncio.Event()

        async def consume() -> None:
            async for _ in engine.generate({"prompt_token_ids": list(range(5, 60))}, params, "c"):
                started.set()

        task = asyncio.create_task(consume())
        await started.wait()
        assert engine.engine.kv_cache.num_free_blocks < NUM_BLOCKS
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await _wait_idle(engine)

        # aclose() of a generator aborts just the same.
        agen = engine.generate({"prompt_token_ids": [0, 7, 8]}, params, "closed")
        await agen.__anext__()
        await agen.aclose()
        await _wait_idle(engine)

    asyncio.run(main())
    assert not engine.engine.has_unfinished_requests()
    assert engine.engine.kv_cache.num_free_blocks == NUM_BLOCKS


def test_abort_api_ends_stream_with_abort(engine: AsyncLLM) -> None:
    params = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)

    async def main() -> str:
        outputs = []
        async for out in engine.generate("to be aborted", params, "ab"):
            outputs.append(out)
            if len(outputs) == 2:
                await engine.abort("ab")
        return outputs[-1].outputs[0].finish_reason

    assert asyncio.run(main()) == "abort"
    assert engine.engine.kv_cache.num_free_blocks == NUM_BLOCKS


def test_validation_error_from_first_anext(engine: AsyncLLM) -> None:
    async def main() -> None:
        agen = engine.generate({"prompt_token_ids": [3] * 300}, SamplingParams(), "too-long")
        with pytest.raises(PromptTooLongError):
            await agen.__anext__()

    asyncio.run(main())
    assert engine.is_running and not engine.errored

    async def long_text() -> None:  # tokenized in a worker thread; same error contract
        agen = engine.generate("many words " * 1000, SamplingParams(), "long-text")
        with pytest.raises(PromptTooLongError) as info:
            await agen.__anext__()
        assert info.value.num_prompt_tokens > 256

    asyncio.run(long_text())


def test_shutdown_aborts_pending_and_refuses_new() -> None:
    engine = _engine()
    params = SamplingParams(temperature=0, max_tokens=250, ignore_eos=True)

    async def main() -> str:
        agen = engine.generate("long", params, "pending")
        await agen.__anext__()
        engine.shutdown()
        last = None
        async for out in agen:
            last = out
        return last.outputs[0].finish_reason

    assert asyncio.run(main()) == "abort"
    assert not engine.is_running

    async def after() -> None:
        async for _ in engine.generate("x", SamplingParams(), "late"):
            pass

    with pytest.raises(EngineDeadError):
        asyncio.run(after())
    with pytest.raises(EngineDeadError):
        asyncio.run(engine.check_health())


def test_streamed_deltas_never_include_a_cut_stop_string(engine: AsyncLLM) -> None:
    prompt = {"prompt_token_ids": [0, 400, 401, 402]}
    base = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)

    async def run(params: SamplingParams, request_id: str) -> list:
        return [out async for out in engine.generate(prompt, params, request_id)]

    full = asyncio.run(run(base, "full"))[-1].outputs[0].text
    stop = full[6:10]
    assert len(stop) == 4
    deltas = asyncio.run(
        run(base.clone(stop=[stop], output_kind=RequestOutputKind.DELTA), "stopped")
    )
    streamed = "".join(o.outputs[0].text for o in deltas)
    assert streamed == full[: full.index(stop)]
    assert deltas[-1].outputs[0].finish_reason == "stop"
    assert deltas[-1].outputs[0].stop_reason == stop


def test_event_loop_stays_responsive_while_the_engine_steps(engine: AsyncLLM) -> None:
    params = SamplingParams(temperature=0, max_tokens=120, ignore_eos=True)

    async def main() -> tuple[float, int]:
        done = False
        gaps: list[float] = []

        async def ticker() -> None:
            last = time.monotonic()
            while not done:
                await asyncio.sleep(0.005)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        async def consume(i: int) -> None:
            async for _ in engine.generate({"prompt_token_ids": [0, 50 + i, 60]}, params, f"t{i}"):
                pass

        tick = asyncio.create_task(ticker())
        await asyncio.gather(*(consume(i) for i in range(16)))
        done = True
        await tick
        return max(gaps), len(gaps)

    worst_gap, ticks = asyncio.run(main())
    # Steps run in the engine thread: the loop keeps ticking between and during them. (Lenient
    # bound: the CI machine is shared; a loop blocked by whole generations would stall seconds.)
    assert ticks > 10
    assert worst_gap < 0.5


def test_slow_consumer_gets_merged_deltas(engine: AsyncLLM) -> None:
    prompt = {"prompt_token_ids": [0, 500, 501]}
    base = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, logprobs=1)

    async def run(kind: RequestOutputKind, request_id: str, delay: float) -> list:
        outs = []
        async for out in engine.generate(prompt, base.clone(output_kind=kind), request_id):
            outs.append(out)
            await asyncio.sleep(delay)  # fall behind the engine
        return outs

    full = asyncio.run(run(RequestOutputKind.CUMULATIVE, "fast", 0.0))[-1].outputs[0]
    slow = asyncio.run(run(RequestOutputKind.DELTA, "slow", 0.05))
    assert len(slow) < 40  # several steps arrived per output
    assert [t for o in slow for t in o.outputs[0].token_ids] == full.token_ids
    assert "".join(o.outputs[0].text for o in slow) == full.text
    assert [lp for o in slow for lp in o.outputs[0].logprobs] == full.logprobs
    assert slow[-1].finished and slow[-1].outputs[0].finish_reason == "length"
    lagging = asyncio.run(run(RequestOutputKind.CUMULATIVE, "slow-cumulative", 0.05))
    assert len(lagging) < 40 and lagging[-1].outputs[0].token_ids == full.token_ids
