"""Per-request limits that keep one request from slowing every other: stop strings (count,
length, matching cost) and logit_bias (clamped, as vLLM)."""

from __future__ import annotations

import functools
import time

import pytest

from mono_llm.core.engine.detokenizer import IncrementalDetokenizer
from mono_llm.core.errors import InvalidRequestError
from mono_llm.core.sampling_params import (
    MAX_LOGIT_BIAS,
    MAX_STOP_STRING_CHARS,
    MAX_STOP_STRINGS,
    SamplingParams,
)
from mono_llm.core.testing import fixture_path
from mono_llm.core.tokenizer import load_tokenizer


@functools.cache
def _tokenizer():
    return load_tokenizer(str(fixture_path("tiny-llama")))


def test_too_many_stop_strings_are_refused_naming_stop() -> None:
    SamplingParams(stop=[f"s{i}" for i in range(MAX_STOP_STRINGS)])  # at the limit: fine
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(stop=[f"s{i}" for i in range(MAX_STOP_STRINGS + 1)])
    assert info.value.param == "stop"
    assert str(MAX_STOP_STRINGS) in info.value.message


def test_too_long_stop_string_is_refused_naming_stop() -> None:
    SamplingParams(stop=["x" * MAX_STOP_STRING_CHARS])
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(stop=["x" * (MAX_STOP_STRING_CHARS + 1)])
    assert info.value.param == "stop"


def _run(text: str, stop: list[str]) -> tuple[list[str], IncrementalDetokenizer, str | None]:
    tok = _tokenizer()
    detok = IncrementalDetokenizer(tok, tok.encode("Say:"), SamplingParams(stop=stop))
    visible, found = [], None
    for token_id in tok.encode(text, add_special_tokens=False):
        found = detok.update([token_id])
        visible.append(detok.visible_text(finished=found is not None))
        if found is not None:
            break
    return visible, detok, found


def test_the_stop_string_completed_first_wins() -> None:
    _, detok, found = _run("alpha beta gamma delta", ["delta", "beta gam", "beta"])
    assert found == "beta"  # complete before "beta gam" could be
    assert detok.output_text == "alpha "
    _, detok, found = _run("alpha beta gamma delta", ["gamma", "beta"])
    assert found == "beta" and detok.output_text == "alpha "


def test_streamed_text_never_shows_part_of_a_later_stop() -> None:
    visible, detok, found = _run("one two three four", ["thr", "three four"])
    assert found == "thr"
    assert all(not v.endswith(("t", "th")) or "thr" not in v for v in visible)
    assert all("thr" not in v for v in visible)
    assert detok.output_text == "one two "


def test_many_long_stop_strings_keep_each_step_cheap() -> None:
    # The worst case the caps allow: every stop string shares the text's characters, so each
    # step must look at the tail for every string.
    stop = [("ab" * MAX_STOP_STRING_CHARS)[: MAX_STOP_STRING_CHARS - 1] + chr(0x4E00 + i)
            for i in range(MAX_STOP_STRINGS)]  # fmt: skip
    tok = _tokenizer()
    detok = IncrementalDetokenizer(tok, tok.encode("Say:"), SamplingParams(stop=stop))
    ids = tok.encode("ab" * 200, add_special_tokens=False)
    start = time.perf_counter()
    for token_id in ids:
        assert detok.update([token_id]) is None
        detok.visible_text(finished=False)
    per_step = (time.perf_counter() - start) / len(ids)
    # Generous for a loaded 2-core machine: before the caps and the tail-only scan, 10,000
    # strings of 1 KB cost hundreds of milliseconds per step.
    assert per_step < 0.02, per_step


def test_logit_bias_is_clamped_to_plus_minus_100() -> None:
    from mono_llm.core import AsyncEngineArgs, AsyncLLM

    engine = AsyncLLM.from_engine_args(
        AsyncEngineArgs(
            model=str(fixture_path("tiny-llama")),
            max_model_len=64,
            disable_log_stats=True,
            engine_process=False,  # the test reaches into the engine object
        )
    )
    try:
        params = engine.engine.validate_sampling_params(
            SamplingParams(logit_bias={5: 1e300, 6: -1e300, 7: 3.5})
        )
        assert params.logit_bias == {5: MAX_LOGIT_BIAS, 6: -MAX_LOGIT_BIAS, 7: 3.5}
    finally:
        engine.shutdown()


# ---------------------------------------------------------------- structured-output grammars
def _backend():
    from mono_llm.core.engine.structured_outputs import XGrammarBackend

    tok = _tokenizer()
    return XGrammarBackend(tok, len(tok), {tok.eos_token_id})


def _schema(num_properties: int) -> dict:
    props = {f"p{i}": {"type": "integer"} for i in range(num_properties)}
    return {"type": "object", "properties": props}


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"json": _schema(600)}, "properties"),
        ({"regex": "a" * 70_000}, "bytes"),
        ({"grammar": 'root ::= "' + "a" * 70_000 + '"'}, "bytes"),
    ],
    ids=["properties", "regex-bytes", "grammar-bytes"],
)
def test_oversized_grammars_are_refused_before_compiling(params, words) -> None:
    from mono_llm.core.sampling_params import StructuredOutputsParams

    with pytest.raises(InvalidRequestError) as info:
        _backend().compile(StructuredOutputsParams(**params))
    assert info.value.param == "structured_outputs" and words in info.value.message


def test_deeply_nested_schema_is_refused() -> None:
    from mono_llm.core.sampling_params import StructuredOutputsParams

    schema: dict = {"type": "integer"}
    for _ in range(40):
        schema = {"type": "object", "properties": {"a": schema}}
    with pytest.raises(InvalidRequestError) as info:
        _backend().compile(StructuredOutputsParams(json=schema))
    assert "nests deeper" in info.value.message


def test_grammar_cache_is_bounded_by_memory() -> None:
    from mono_llm.core.sampling_params import StructuredOutputsParams

    backend = _backend()
    backend.compile(StructuredOutputsParams(json=_schema(3)))
    one = backend.cache_bytes
    assert one > 0
    backend.cache_limit_bytes = one * 4
    for n in range(4, 12):
        backend.compile(StructuredOutputsParams(json=_schema(n)))
        # Past the bound only the newest grammar (the one a request is about to use) stays.
        assert backend.cache_bytes <= backend.cache_limit_bytes or len(backend._cache) == 1
    assert len(backend._cache) < 9


def test_concurrent_requests_for_one_schema_compile_it_once(monkeypatch) -> None:
    import threading

    from mono_llm.core.sampling_params import StructuredOutputsParams

    backend = _backend()
    calls = []
    real = backend._compile

    def slow_compile(kind, *args):
        calls.append(kind)
        time.sleep(0.3)
        return real(kind, *args)

    monkeypatch.setattr(backend, "_compile", slow_compile)
    params = StructuredOutputsParams(json=_schema(5))
    results = []
    threads = [threading.Thread(target=lambda: results.append(backend.compile(params)))
               for _ in range(4)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 4 and all(r is results[0] for r in results)


def test_a_compile_past_the_deadline_is_a_400_and_others_keep_running(monkeypatch) -> None:
    import asyncio

    from mono_llm.core import AsyncEngineArgs, AsyncLLM
    from mono_llm.core import async_llm as async_llm_module
    from mono_llm.core.sampling_params import StructuredOutputsParams

    engine = AsyncLLM.from_engine_args(
        AsyncEngineArgs(
            model=str(fixture_path("tiny-llama")),
            max_model_len=64,
            disable_log_stats=True,
            engine_process=False,  # the test reaches into the engine object
        )
    )
    factory = engine.engine.grammar_factory
    monkeypatch.setattr(async_llm_module, "GRAMMAR_COMPILE_TIMEOUT_S", 0.2)

    def slow_factory(params, tok, vocab):
        time.sleep(1.0)
        return factory(params, tok, vocab)

    engine.engine.grammar_factory = slow_factory

    async def run() -> None:
        params = SamplingParams(
            max_tokens=4, structured_outputs=StructuredOutputsParams(json=_schema(2))
        )
        with pytest.raises(InvalidRequestError) as info:
            async for _ in engine.generate({"prompt_token_ids": [1, 2, 3]}, params, "slow"):
                pass
        assert info.value.param == "structured_outputs" and "compile" in info.value.message
        async for out in engine.generate(
            {"prompt_token_ids": [1, 2, 3]}, SamplingParams(max_tokens=2), "plain"
        ):
            last = out
        assert last.finished

    try:
        asyncio.run(run())
    finally:
        engine.shutdown()
