"""Request -> SamplingParams and engine logprobs -> OpenAI shapes, without an engine."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from mono_llm.core.errors import PromptTooLongError
from mono_llm.core.outputs import Logprob
from mono_llm.core.sampling_params import RequestOutputKind
from mono_llm.core.testing import fixture_path
from mono_llm.openai_api.chat_completion.protocol import ChatCompletionRequest
from mono_llm.openai_api.completion.protocol import CompletionRequest
from mono_llm.openai_api.errors import OpenAIError
from mono_llm.openai_api.logprobs import (
    TokenText,
    chat_logprobs,
    completion_logprobs,
    next_text_offset,
)
from mono_llm.openai_api.sampling import build_sampling_params, resolve_max_tokens


def _params(request, defaults=None, **kwargs):
    kwargs.setdefault("max_tokens", 16)
    kwargs.setdefault("logprobs", None)
    kwargs.setdefault("prompt_logprobs", None)
    return build_sampling_params(request, defaults or {}, **kwargs)


def test_request_then_model_defaults_then_openai_defaults() -> None:
    defaults = {"temperature": 0.6, "top_p": 0.9, "top_k": 20}
    unset = _params(CompletionRequest(prompt="x"), defaults)
    assert (unset.temperature, unset.top_p, unset.top_k) == (0.6, 0.9, 20)
    assert unset.min_p == 0.0 and unset.repetition_penalty == 1.0
    chosen = _params(CompletionRequest(prompt="x", temperature=0.0, top_k=3), defaults)
    assert chosen.temperature == 0.0 and chosen.top_k == 3 and chosen.top_p == 0.9
    assert _params(CompletionRequest(prompt="x")).temperature == 1.0
    assert unset.output_kind is RequestOutputKind.DELTA


def test_vllm_extra_parameters_reach_sampling_params() -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "messages": [{"role": "user", "content": "x"}],
            "stop": "END",
            "stop_token_ids": [7],
            "ignore_eos": True,
            "min_tokens": 2,
            "skip_special_tokens": False,
            "include_stop_str_in_output": True,
            "repetition_penalty": 1.2,
            "min_p": 0.1,
            "seed": 3,
            "logit_bias": {"5": 200},
            "n": 2,
        }
    )
    params = _params(request)
    assert params.stop == ["END"] and params.stop_token_ids == [7]
    assert params.ignore_eos and params.min_tokens == 2 and not params.skip_special_tokens
    assert params.include_stop_str_in_output and params.repetition_penalty == 1.2
    assert params.min_p == 0.1 and params.seed == 3 and params.n == 2
    assert params.logit_bias == {5: 100.0}  # clamped to OpenAI's range


def test_structured_outputs_from_every_spelling() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = CompletionRequest.model_validate(
        {"prompt": "x", "response_format": {"type": "json_schema",
                                             "json_schema": {"name": "s", "schema": schema}}}
    )  # fmt: skip
    assert _params(fmt).structured_outputs.json == schema
    legacy = CompletionRequest(prompt="x", guided_choice=["yes", "no"])
    assert _params(legacy).structured_outputs.choice == ["yes", "no"]
    new = CompletionRequest(prompt="x", structured_outputs={"regex": "[0-9]+"})
    assert _params(new).structured_outputs.regex == "[0-9]+"
    obj = CompletionRequest.model_validate(
        {"prompt": "x", "response_format": {"type": "json_object"}}
    )
    assert _params(obj).structured_outputs.json_object is True
    with pytest.raises(OpenAIError) as info:
        _params(CompletionRequest(prompt="x", structured_outputs={"nonsense": 1}))
    assert info.value.param == "structured_outputs"


def test_max_tokens_against_the_context_window() -> None:
    assert resolve_max_tokens(None, 10, 100) == 90
    assert resolve_max_tokens(None, 10, 100, default=32) == 32
    assert resolve_max_tokens(5, 10, 100) == 5
    with pytest.raises(OpenAIError) as info:
        resolve_max_tokens(95, 10, 100)
    assert info.value.param == "max_tokens" and "100" in info.value.message
    with pytest.raises(PromptTooLongError):
        resolve_max_tokens(None, 100, 100)


def test_completion_prompt_shapes() -> None:
    assert CompletionRequest(prompt="a").prompts() == ["a"]
    assert CompletionRequest(prompt=["a", "b"]).prompts() == ["a", "b"]
    assert CompletionRequest(prompt=[1, 2]).prompts() == [[1, 2]]
    assert CompletionRequest(prompt=[[1], [2, 3]]).prompts() == [[1], [2, 3]]


@pytest.fixture(scope="module")
def token_text():
    return TokenText(AutoTokenizer.from_pretrained(fixture_path("tiny-llama")))


def test_completion_logprobs_shape(token_text) -> None:
    positions = [
        None,
        {10: Logprob(-0.5, rank=1), 11: Logprob(-1.5, rank=2)},
        {12: Logprob(-3.0, rank=4), 13: Logprob(-0.1, rank=1), 14: Logprob(-2.0, rank=2)},
    ]
    out = completion_logprobs([9, 10, 12], positions, token_text, num_top=2)
    assert out.token_logprobs == [None, -0.5, -3.0]
    assert out.top_logprobs[0] is None
    # The chosen token is always present, plus the top-2 alternatives.
    assert len(out.top_logprobs[2]) == 3
    assert out.text_offset[0] == 0
    assert out.text_offset[1] == len(out.tokens[0])
    assert next_text_offset(out) == sum(len(t) for t in out.tokens)
    just_chosen = completion_logprobs([12], positions[2:], token_text, num_top=0)
    assert list(just_chosen.top_logprobs[0].values()) == [-3.0]


def test_chat_logprobs_shape_and_infinite_values(token_text) -> None:
    positions = [{20: Logprob(float("-inf"), rank=3), 21: Logprob(-0.2, rank=1),
                  22: Logprob(-0.9, rank=2)}]  # fmt: skip
    out = chat_logprobs([20], positions, token_text, num_top=2)
    entry = out.content[0]
    assert entry.logprob == -9999.0  # JSON has no -inf
    assert entry.bytes == list(entry.token.encode())
    assert [alt.logprob for alt in entry.top_logprobs] == [-0.2, -0.9]
    as_ids = chat_logprobs([20], positions, TokenText(None, as_token_ids=True), num_top=1)
    assert as_ids.content[0].token == "token_id:20"
