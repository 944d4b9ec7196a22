"""Structured outputs through the sampler's bitmask hook (xgrammar) on a random tiny model:
whatever the weights prefer, the text must match the constraint."""

from __future__ import annotations

import functools
import json
import re

import pytest

from mono_llm.core import LLM, InvalidRequestError, SamplingParams, StructuredOutputsParams
from mono_llm.core.testing import fixture_path


@functools.cache
def _llm() -> LLM:
    return LLM(str(fixture_path("tiny-qwen2")), max_model_len=256, num_gpu_blocks_override=64)


def _generate(structured: StructuredOutputsParams, n: int = 3, max_tokens: int = 60) -> list:
    params = SamplingParams(
        temperature=1.0, seed=0, n=n, max_tokens=max_tokens, structured_outputs=structured
    )
    return _llm().generate(["Answer:"], params)[0].outputs


def test_choice() -> None:
    choices = ["yes", "no", "maybe not"]
    for out in _generate(StructuredOutputsParams(choice=choices)):
        assert out.text in choices and out.finish_reason == "stop"


def test_regex() -> None:
    pattern = r"(red|green) [0-9]{2}"
    for out in _generate(StructuredOutputsParams(regex=pattern)):
        assert re.fullmatch(pattern, out.text), out.text


def test_json_schema() -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "enum": [1, 2, 3]}},
        "required": ["ok", "n"],
        "additionalProperties": False,
    }
    outs = _generate(StructuredOutputsParams(json=schema), max_tokens=120)
    finished = [o for o in outs if o.finish_reason == "stop"]
    assert finished, [o.text for o in outs]
    for out in finished:
        value = json.loads(out.text)
        assert (
            set(value) == {"ok", "n"} and isinstance(value["ok"], bool) and value["n"] in (1, 2, 3)
        )


def test_invalid_regex_is_a_request_error() -> None:
    with pytest.raises(InvalidRequestError) as info:
        _generate(StructuredOutputsParams(regex="(unclosed"), n=1)
    assert info.value.param == "structured_outputs"
    assert not _llm().llm_engine.has_unfinished_requests()
