"""Failures inside the engine: a model step that raises ends every request in flight with an
error (none hangs) and marks the engine dead; a request whose own processing raises (a
detokenizer or grammar error) fails alone while the others finish. Also the sampling-params
validation that keeps hostile values (NaN, huge n, out-of-range seeds) out of the step."""

from __future__ import annotations

import asyncio
import json
import math
import time

import pytest

from mono_llm.core import AsyncEngineArgs, AsyncLLM, SamplingParams
from mono_llm.core.errors import EngineDeadError, EngineError, InvalidRequestError
from mono_llm.core.testing import fixture_path

TIMEOUT_S = 30  # any await longer than this is a hang


def _engine(**kwargs) -> AsyncLLM:
    args = AsyncEngineArgs(
        model=str(fixture_path("tiny-llama")),
        max_model_len=128,
        num_gpu_blocks_override=64,
        disable_log_stats=True,
        engine_process=False,  # these tests inject failures into the engine object
        **kwargs,
    )
    return AsyncLLM.from_engine_args(args)


async def _collect(engine: AsyncLLM, request_id: str, max_tokens: int = 40) -> str:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    last = None
    async for out in engine.generate({"prompt_token_ids": [0, 5, 6, 7]}, params, request_id):
        last = out
    assert last is not None and last.finished
    return last.outputs[0].finish_reason


def test_model_step_failure_fails_every_request_in_flight_and_kills_the_engine() -> None:
    engine = _engine()
    runner = engine.engine.model_runner
    real_execute = runner.execute
    calls = {"n": 0}

    def execute_failing_once(batch):  # the 4th step raises, with requests mid-decode
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("simulated CUDA error")
        return real_execute(batch)

    runner.execute = execute_failing_once

    async def main() -> list[BaseException | str]:
        tasks = [_collect(engine, f"r{i}") for i in range(3)]
        return await asyncio.wait_for(
            asyncio.gather(*tasks, return_exceptions=True), timeout=TIMEOUT_S
        )

    try:
        results = asyncio.run(main())
        for result in results:
            # In flight: a server error (500), not "dead engine" (503, for new requests).
            assert isinstance(result, EngineError) and not isinstance(result, EngineDeadError)
            assert "simulated CUDA error" in str(result)
        assert engine.errored and not engine.is_running
        with pytest.raises(EngineDeadError):
            asyncio.run(engine.check_health())
        with pytest.raises(EngineDeadError):
            asyncio.run(asyncio.wait_for(_collect(engine, "late"), timeout=TIMEOUT_S))
    finally:
        engine.shutdown()


def test_submit_racing_with_the_dying_loop_never_waits_forever() -> None:
    """A request that passed generate()'s liveness check but registers its stream after the
    loop failed every stream must raise, not wait for outputs that never come."""
    engine = _engine()
    engine.engine.model_runner.execute = lambda batch: (_ for _ in ()).throw(RuntimeError("x"))

    async def main() -> None:
        with pytest.raises(EngineError):
            await asyncio.wait_for(_collect(engine, "first"), timeout=TIMEOUT_S)
        params = SamplingParams(max_tokens=2)
        late = engine._submit("late", params, None, [0, 5], 0)  # past the liveness check
        with pytest.raises(EngineDeadError):
            await asyncio.wait_for(late.__anext__(), timeout=TIMEOUT_S)

    try:
        asyncio.run(main())
    finally:
        engine.shutdown()


def test_one_request_failing_in_its_detokenizer_does_not_kill_the_others() -> None:
    engine = _engine()
    core = engine.engine
    real_check_stop = core.generation_step.check_stop

    def check_stop(seq, token):
        if seq.request_id == "poisoned" and seq.num_output_tokens == 3:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "simulated detokenizer error")
        return real_check_stop(seq, token)

    core.generation_step.check_stop = check_stop

    async def main() -> list[BaseException | str]:
        tasks = [_collect(engine, "healthy-1"), _collect(engine, "poisoned"),
                 _collect(engine, "healthy-2")]  # fmt: skip
        return await asyncio.wait_for(
            asyncio.gather(*tasks, return_exceptions=True), timeout=TIMEOUT_S
        )

    try:
        healthy_1, poisoned, healthy_2 = asyncio.run(main())
        assert healthy_1 == healthy_2 == "length"
        assert isinstance(poisoned, EngineError) and "simulated detokenizer" in str(poisoned)
        assert engine.is_running and not engine.errored
        assert not core.has_unfinished_requests()
        assert core.kv_cache.usage == 0 or core.config.cache_config.enable_prefix_caching
        assert asyncio.run(asyncio.wait_for(_collect(engine, "after"), TIMEOUT_S)) == "length"
    finally:
        engine.shutdown()


def test_a_slow_grammar_compile_does_not_stall_other_requests() -> None:
    """Grammars compile in a worker thread before the request reaches the step loop (a deep
    JSON schema takes seconds in xgrammar), so other streams keep going meanwhile."""
    from mono_llm.core.sampling_params import StructuredOutputsParams

    engine = _engine()
    core = engine.engine
    real_factory = core.grammar_factory
    compiled: set[str] = set()

    def slow_factory(params, tokenizer, vocab_size):
        key = json.dumps(params.json, sort_keys=True)
        if key not in compiled:  # the first compile is slow, later ones hit the cache
            time.sleep(1.5)
            compiled.add(key)
        return real_factory(params, tokenizer, vocab_size)

    core.grammar_factory = slow_factory

    async def main() -> tuple[float, float]:
        start = time.monotonic()
        schema = StructuredOutputsParams(json={"type": "object"})
        params = SamplingParams(max_tokens=4, structured_outputs=schema)

        async def constrained() -> float:
            async for _ in engine.generate({"prompt_token_ids": [0, 5]}, params, "schema"):
                pass
            return time.monotonic() - start

        async def plain() -> float:
            await asyncio.sleep(0.1)  # the constrained request is compiling by now
            await _collect(engine, "plain", max_tokens=8)
            return time.monotonic() - start

        return await asyncio.wait_for(asyncio.gather(constrained(), plain()), TIMEOUT_S)

    try:
        constrained_s, plain_s = asyncio.run(main())
        assert constrained_s >= 1.5
        assert plain_s < 1.2, "the plain request waited for another request's grammar"
    finally:
        engine.shutdown()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", math.nan),
        ("temperature", math.inf),
        ("top_p", math.nan),
        ("min_p", math.nan),
        ("repetition_penalty", math.nan),
        ("presence_penalty", -math.inf),
        ("frequency_penalty", math.nan),
        ("seed", 2**63),
        ("seed", -(2**63) - 1),
    ],
)
def test_non_finite_and_out_of_range_sampling_values_are_refused(field: str, value) -> None:
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(**{field: value})
    assert info.value.param == field


def test_nan_logit_bias_is_refused() -> None:
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(logit_bias={5: math.nan})
    assert info.value.param == "logit_bias"


def test_n_beyond_max_num_seqs_is_refused_before_reaching_the_loop() -> None:
    engine = _engine(max_num_seqs=4)
    try:
        for params, param in ((SamplingParams(n=5), "n"), (SamplingParams(n=2, best_of=10**9),
                              "best_of")):  # fmt: skip
            with pytest.raises(InvalidRequestError) as info:
                engine.engine.validate_sampling_params(params)
            assert info.value.param == param
        assert engine.engine.validate_sampling_params(SamplingParams(n=4)).n == 4
    finally:
        engine.shutdown()


def test_offline_llm_raises_when_one_of_its_requests_fails_in_the_engine() -> None:
    from mono_llm.core import LLM

    llm = LLM(model=str(fixture_path("tiny-llama")), max_model_len=128)
    core = llm.llm_engine
    real_check_stop = core.generation_step.check_stop
    failing = {"id": None}

    def check_stop(seq, token):
        failing["id"] = failing["id"] or seq.request_id
        if seq.request_id == failing["id"] and seq.num_output_tokens == 2:
            raise ValueError("simulated detokenizer error")
        return real_check_stop(seq, token)

    core.generation_step.check_stop = check_stop
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    with pytest.raises(EngineError, match="simulated detokenizer error"):
        llm.generate(["one", "two"], params, use_tqdm=False)
    assert not core.has_unfinished_requests()  # the other request was aborted, blocks freed
    core.generation_step.check_stop = real_check_stop
    outputs = llm.generate(["three"], params, use_tqdm=False)
    assert len(outputs[0].outputs[0].token_ids) == 8
