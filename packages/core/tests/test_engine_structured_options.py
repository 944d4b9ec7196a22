"""JSON options of structured outputs (object-only json_object, whitespace, additional
properties) and the reasoning gate, checked on the compiled grammars and on a random model."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from transformers import AutoTokenizer

from mono_llm.core import LLM, SamplingParams, StructuredOutputsParams
from mono_llm.core.engine.structured_outputs import XGrammarBackend
from mono_llm.core.testing import fixture_path

xgrammar = pytest.importorskip("xgrammar")
MODEL = "tiny-llama"


@functools.cache
def _tokenizer():
    return AutoTokenizer.from_pretrained(fixture_path(MODEL))


@functools.cache
def _backend() -> XGrammarBackend:
    tokenizer = _tokenizer()
    return XGrammarBackend(tokenizer, len(tokenizer), {tokenizer.eos_token_id})


def _accepts(params: StructuredOutputsParams, text: str) -> bool:
    """Whether the grammar accepts exactly `text` (then end of sequence)."""
    matcher = xgrammar.GrammarMatcher(_backend().compile(params))
    return matcher.accept_string(text) and matcher.accept_token(_tokenizer().eos_token_id)


def test_json_object_is_an_object_never_an_array_or_scalar() -> None:
    params = StructuredOutputsParams(json_object=True)
    assert _accepts(params, '{"a": [1, {"b": null}]}')
    for text in ("[1, 2]", "1", '"x"', "null"):
        assert not _accepts(params, text), text


def test_whitespace_options() -> None:
    spaced, compact = '{"a": [1, 2]}', '{"a":[1,2]}'
    tight = StructuredOutputsParams(json_object=True, disable_any_whitespace=True)
    assert _accepts(tight, compact) and not _accepts(tight, spaced)
    schema = {"type": "object", "properties": {"a": {"type": "array"}}}
    tight_schema = StructuredOutputsParams(json=schema, disable_any_whitespace=True)
    assert _accepts(tight_schema, compact) and not _accepts(tight_schema, spaced)
    one_space = StructuredOutputsParams(json_object=True, whitespace_pattern=r"[ ]?")
    assert _accepts(one_space, spaced) and _accepts(one_space, compact)
    assert not _accepts(one_space, '{"a":  [1, 2]}') and not _accepts(one_space, '{\n"a": 1}')


def test_additional_properties_option() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    extra = '{"a": 1, "b": 2}'
    assert not _accepts(StructuredOutputsParams(json=schema), extra)  # xgrammar's strict default
    assert not _accepts(
        StructuredOutputsParams(json=schema, disable_additional_properties=True), extra
    )
    assert _accepts(
        StructuredOutputsParams(json=schema, disable_additional_properties=False), extra
    )


def test_reasoning_gate_constrains_only_after_the_marker() -> None:
    tokenizer = _tokenizer()
    params = StructuredOutputsParams(json_object=True, reasoning_end="</think>")
    gate = _backend()(params, tokenizer, len(tokenizer))
    words = -(-len(tokenizer) // 32)
    brace = tokenizer.convert_tokens_to_ids("{")
    letter = tokenizer.convert_tokens_to_ids("a")

    def allowed(token: int) -> bool:
        bitmask = torch.zeros((1, words), dtype=torch.int32)
        gate.fill_next_token_bitmask(bitmask, 0)
        return bool((int(bitmask[0, token // 32]) >> (token % 32)) & 1)

    for token in tokenizer("thinking about it </thi", add_special_tokens=False).input_ids:
        assert allowed(letter) and allowed(brace) and not gate.is_terminated()
        assert gate.accept_token(token)
    for token in tokenizer("nk>", add_special_tokens=False).input_ids:
        gate.accept_token(token)
    assert allowed(brace) and not allowed(letter)  # now the answer: a JSON object
    for token in tokenizer("{}", add_special_tokens=False).input_ids:
        assert gate.accept_token(token)
    assert gate.accept_token(tokenizer.eos_token_id) and gate.is_terminated()


def test_fifty_seeds_of_json_object_all_parse_to_objects() -> None:
    """A bias toward `[` makes the model open an array whenever the grammar lets it (the
    builtin JSON grammar does, at the top level); biases toward closing characters keep
    every reply short enough to finish."""
    tokenizer = _tokenizer()
    bias = {tokenizer.convert_tokens_to_ids(t): b
            for t, b in (("[", 30), ("]", 40), ("}", 40), ('"', 40), (":", 40), ("1", 40))}  # fmt: skip
    llm = LLM(str(fixture_path(MODEL)), max_model_len=128, num_gpu_blocks_override=128)
    params = [
        SamplingParams(temperature=1.0, seed=seed, max_tokens=48, logit_bias=bias,
                       structured_outputs=StructuredOutputsParams(json_object=True))
        for seed in range(50)
    ]  # fmt: skip
    outputs = llm.generate(["Give me JSON:"] * 50, params, use_tqdm=False)
    texts = [o.outputs[0].text for o in outputs]
    assert all(isinstance(json.loads(text), dict) for text in texts), texts
