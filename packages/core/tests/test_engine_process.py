"""AsyncLLM with the step loop in its own process (engine_process=True): the same outputs as
the in-process engine, aborts and cancellation across the process boundary, the waiting-queue
bound, a bounded request queue toward a stalled engine, and a killed engine process failing
every request cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from mono_llm.core import LLM, AsyncEngineArgs, SamplingParams
from mono_llm.core.async_llm import AsyncLLM
from mono_llm.core.engine import client as client_module
from mono_llm.core.engine.messages import AddRequest
from mono_llm.core.errors import (
    EngineDeadError,
    EngineError,
    EngineOverloadedError,
    InvalidRequestError,
)
from mono_llm.core.sampling_params import RequestOutputKind
from mono_llm.core.testing import fixture_path

PROMPTS = ["The capital of France is", "Hello, my name is", "1 2 3 4 5"]


def _args(**kwargs) -> AsyncEngineArgs:
    return AsyncEngineArgs(
        model=str(fixture_path("tiny-llama")),
        max_model_len=256,
        num_gpu_blocks_override=64,
        disable_log_stats=True,
        engine_process=True,
        **kwargs,
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) counts as gone.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


async def _collect(engine: AsyncLLM, prompt, params: SamplingParams, request_id: str):
    ids: list[int] = []
    text = ""
    async for out in engine.generate(prompt, params, request_id):
        ids += out.outputs[0].token_ids
        text += out.outputs[0].text
    return out, ids, text


@pytest.fixture(scope="module")
def engine():
    engine = AsyncLLM.from_engine_args(_args(max_num_seqs=4, max_waiting_requests=8))
    yield engine
    pid = engine.engine_pid
    engine.shutdown()
    assert pid is not None and not _alive(pid), "the engine process outlived shutdown"


def test_engine_runs_in_a_child_process(engine: AsyncLLM) -> None:
    pid = engine.engine_pid
    assert pid is not None and pid != os.getpid() and _alive(pid)
    with open(f"/proc/{pid}/stat") as f:
        assert int(f.read().split(")")[-1].split()[1]) == os.getpid()  # our child
    with pytest.raises(AttributeError):
        _ = engine.engine  # no EngineCore in this process


def test_outputs_match_the_offline_engine(engine: AsyncLLM) -> None:
    params = SamplingParams(max_tokens=12, temperature=0.0, output_kind=RequestOutputKind.DELTA)
    offline = LLM(str(fixture_path("tiny-llama")), max_model_len=256).generate(
        PROMPTS, params.clone(output_kind=RequestOutputKind.FINAL_ONLY), use_tqdm=False
    )

    async def run():
        return await asyncio.gather(
            *[_collect(engine, p, params, f"parity-{i}") for i, p in enumerate(PROMPTS)]
        )

    results = asyncio.run(run())
    for prompt, (last, ids, text), expected in zip(PROMPTS, results, offline, strict=True):
        assert ids == expected.outputs[0].token_ids
        assert text == expected.outputs[0].text
        assert last.finished and last.outputs[0].finish_reason == "length"
        # The prompt is not sent back over the socket; the API process fills it in.
        assert last.prompt_token_ids == expected.prompt_token_ids
        assert last.prompt == prompt


def test_validation_happens_in_the_api_process(engine: AsyncLLM) -> None:
    async def run():
        with pytest.raises(InvalidRequestError):
            await _collect(engine, "x" * 4000, SamplingParams(max_tokens=1), "too-long")
        with pytest.raises(InvalidRequestError):
            await _collect(engine, "hi", SamplingParams(logprobs=10**6), "bad-logprobs")

    asyncio.run(run())
    assert engine.is_running


def test_consumer_leaving_aborts_the_request_in_the_engine_process(engine: AsyncLLM) -> None:
    params = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)

    async def run():
        stream = engine.generate("a long one", params, "leaver")
        first = await stream.__anext__()
        assert not first.finished
        await stream.aclose()  # the client went away
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            stats = engine.get_stats()
            if stats.num_running_reqs == 0 and stats.kv_cache_usage == 0.0:
                return stats
            await asyncio.sleep(0.05)
        raise AssertionError(f"the engine process still runs the request: {stats}")

    asyncio.run(run())


def test_abort_ends_the_stream_with_abort(engine: AsyncLLM) -> None:
    params = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)

    async def run():
        outputs = []
        async for out in engine.generate("abort me", params, "aborted"):
            outputs.append(out)
            if len(outputs) == 1:
                await engine.abort("aborted")
        return outputs

    outputs = asyncio.run(run())
    assert outputs[-1].finished and outputs[-1].outputs[0].finish_reason == "abort"
    assert len(outputs[-1].outputs[0].token_ids) < 200


def test_waiting_bound_counts_requests_on_their_way(engine: AsyncLLM) -> None:
    """max_num_seqs=4, max_waiting_requests=8: of 20 requests sent at once, the ones past the
    bound are refused up front, before the engine process has even seen the first."""
    params = SamplingParams(
        max_tokens=30, temperature=0.0, ignore_eos=True, output_kind=RequestOutputKind.DELTA
    )

    async def run():
        return await asyncio.gather(
            *[_collect(engine, "busy", params, f"bound-{i}") for i in range(20)],
            return_exceptions=True,
        )

    results = asyncio.run(run())
    refused = [r for r in results if isinstance(r, EngineOverloadedError)]
    served = [r for r in results if not isinstance(r, BaseException)]
    assert len(refused) + len(served) == 20, results
    assert refused and len(served) >= 8
    assert all(len(ids) == 30 for _, ids, _ in served)


def test_stalled_engine_process_bounds_the_request_queue_then_its_death_fails_requests(
    monkeypatch,
) -> None:
    """A stopped (SIGSTOP) engine process: requests queue toward it only up to a bound, then
    are refused as overloaded; killed (SIGKILL), its in-flight requests fail with an engine
    error, new ones with EngineDeadError, and the process is reaped."""
    monkeypatch.setattr(client_module, "INPUT_QUEUE_BOUND", 4)
    engine = AsyncLLM.from_engine_args(_args())
    pid = engine.engine_pid
    assert pid is not None
    params = SamplingParams(max_tokens=500, temperature=0.0, ignore_eos=True)

    async def run():
        stream = engine.generate("in flight", params, "victim")
        await stream.__anext__()
        os.kill(pid, signal.SIGSTOP)
        try:
            client = engine._client
            dummy = AddRequest("x", [1], sampling=SamplingParams(max_tokens=1))
            with pytest.raises(EngineOverloadedError):
                for i in range(200_000):  # the OS socket buffer takes some; the bound the rest
                    dummy.request_id = f"flood-{i}"
                    client.add_request(dummy)
        finally:
            os.kill(pid, signal.SIGKILL)
            os.kill(pid, signal.SIGCONT)
        with pytest.raises(EngineError) as failed:
            async for _ in stream:
                pass
        assert not isinstance(failed.value, EngineDeadError) or "died" in str(failed.value)
        with pytest.raises(EngineDeadError):
            await _collect(engine, "after", SamplingParams(max_tokens=1), "late")

    try:
        asyncio.run(asyncio.wait_for(run(), 60))
        assert engine.errored and not engine.is_running
    finally:
        engine.shutdown()
    assert not _alive(pid)


def test_a_model_that_fails_to_load_fails_start_up_with_its_error(tmp_path) -> None:
    model = tmp_path / "broken"
    model.mkdir()
    source = fixture_path("tiny-llama")
    for item in source.iterdir():
        if not item.name.endswith(".safetensors"):
            (model / item.name).write_bytes(item.read_bytes())
    (model / "model.safetensors").write_bytes(b"not a checkpoint")
    args = _args()
    args.model = str(model)
    with pytest.raises(EngineError, match="failed to start"):
        AsyncLLM.from_engine_args(args)


def test_out_of_range_values_are_a_request_error_not_a_crash(engine: AsyncLLM) -> None:
    async def run():
        # A value msgpack cannot carry is refused as the request's own error.
        params = SamplingParams(max_tokens=2, extra_args={"x": 10**30})
        with pytest.raises(InvalidRequestError):
            await _collect(engine, "hi", params, "huge-extra")

    async def priority_run():
        # A priority past 64 bits is clamped (it only orders requests) and served.
        stream = engine.generate(
            "hi", SamplingParams(max_tokens=2, temperature=0.0), "prio", priority=10**30
        )
        return [o async for o in stream]

    asyncio.run(run())
    assert asyncio.run(priority_run())[-1].finished
    assert engine.is_running


def test_structured_output_across_the_process_boundary(engine: AsyncLLM) -> None:
    """The engine process compiles the grammar off its loop, then admits the request."""
    from mono_llm.core.sampling_params import StructuredOutputsParams

    params = SamplingParams(
        max_tokens=20,
        temperature=0.0,
        structured_outputs=StructuredOutputsParams(choice=["yes please", "no thanks"]),
    )

    async def run():
        return await asyncio.gather(
            _collect(engine, "Answer:", params, "choice-1"),
            _collect(engine, "hello", SamplingParams(max_tokens=5, temperature=0.0), "plain"),
        )

    (last, _, _), (plain, _, _) = asyncio.run(run())  # cumulative outputs: the last has all
    assert last.outputs[0].text in ("yes please", "no thanks")
    assert last.outputs[0].finish_reason == "stop"
    assert len(plain.outputs[0].token_ids) == 5
