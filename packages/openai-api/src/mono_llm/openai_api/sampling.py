"""Request body -> `SamplingParams`, shared by completions and chat.

Precedence for the knobs a model's generation_config.json may set (temperature, top_p, top_k,
min_p, repetition_penalty): the request, then the model's defaults, then OpenAI's defaults —
the order vLLM uses, so a model tuned for temperature 0.6 behaves the same on both servers.
"""

from __future__ import annotations

import json
import math
from typing import Any

from mono_llm.core.errors import PromptTooLongError
from mono_llm.core.sampling_params import (
    RequestOutputKind,
    SamplingParams,
    StructuredOutputsParams,
)
from mono_llm.openai_api.errors import OpenAIError
from mono_llm.openai_api.protocol import SamplingExtras

_OPENAI_DEFAULTS = {
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
}


# vLLM's StructuredOutputsParams options that pick or tune its backends; accepted and ignored
# here (xgrammar is the one backend), so requests written for vLLM keep working. The JSON
# options (disable_any_whitespace, disable_additional_properties, whitespace_pattern) are
# StructuredOutputsParams fields and take effect.
_BACKEND_OPTIONS = frozenset({"disable_fallback", "backend"})


def structured_outputs_of(request: SamplingExtras) -> StructuredOutputsParams | None:
    """response_format, structured_outputs or the legacy guided_* fields, as one params object."""
    kinds: dict[str, Any] = {}
    if request.structured_outputs:
        kinds.update(
            (k, v) for k, v in request.structured_outputs.items() if k not in _BACKEND_OPTIONS
        )
        # vLLM's structured-outputs docs spell the choice list `choices` in their example.
        if "choices" in kinds and "choice" not in kinds:
            kinds["choice"] = kinds.pop("choices")
    if request.guided_json is not None:
        kinds["json"] = request.guided_json
    if request.guided_regex is not None:
        kinds["regex"] = request.guided_regex
    if request.guided_choice is not None:
        kinds["choice"] = request.guided_choice
    if request.guided_grammar is not None:
        kinds["grammar"] = request.guided_grammar
    fmt = request.response_format
    if fmt is not None and fmt.type == "json_object":
        kinds["json_object"] = True
    elif fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None or fmt.json_schema.json_schema is None:
            raise OpenAIError(
                "response_format of type json_schema needs json_schema.schema.",
                400,
                param="response_format",
            )
        kinds["json"] = fmt.json_schema.json_schema
    elif fmt is not None and fmt.type == "structural_tag":
        kinds["structural_tag"] = fmt.model_dump(exclude={"json_schema"}, exclude_none=True)
    if isinstance(kinds.get("structural_tag"), dict):
        kinds["structural_tag"] = json.dumps(kinds["structural_tag"])
    if not kinds:
        return None
    known = set(StructuredOutputsParams.__dataclass_fields__)
    unknown = set(kinds) - known
    if unknown:
        raise OpenAIError(
            f"Unknown structured_outputs keys: {', '.join(sorted(unknown))}; known: "
            f"{', '.join(sorted(known))}.",
            400,
            param="structured_outputs",
        )
    if isinstance(kinds.get("json"), str):
        try:
            kinds["json"] = json.loads(kinds["json"])
        except json.JSONDecodeError as exc:
            raise OpenAIError(
                f"guided_json is not valid JSON: {exc}", 400, param="guided_json"
            ) from exc
    params = StructuredOutputsParams(**kinds)
    return None if params.is_empty else params


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float] | None:
    if not bias:
        return None
    out = {}
    for key, value in bias.items():
        try:
            token_id = int(key)
        except ValueError as exc:
            raise OpenAIError(
                f"logit_bias keys must be token ids, got {key!r}.", 400, param="logit_bias"
            ) from exc
        if not math.isfinite(value):  # min/max below would turn NaN into +100
            raise OpenAIError(
                f"logit_bias[{key!r}] must be a finite number, got {value}.",
                400,
                param="logit_bias",
            )
        out[token_id] = max(-100.0, min(100.0, float(value)))
    return out


def build_sampling_params(
    request: SamplingExtras,
    defaults: dict[str, Any],
    *,
    max_tokens: int | None,
    logprobs: int | None,
    prompt_logprobs: int | None,
    output_kind: RequestOutputKind = RequestOutputKind.DELTA,
) -> SamplingParams:
    """The engine's SamplingParams for one request (validation errors name the field)."""
    knobs = {}
    for name, openai_default in _OPENAI_DEFAULTS.items():
        value = getattr(request, name)
        if value is None:
            value = defaults.get(name, openai_default)
        knobs[name] = value
    return SamplingParams(
        n=request.n,
        best_of=request.best_of,
        presence_penalty=request.presence_penalty or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0,
        seed=request.seed,
        stop=request.stop,
        stop_token_ids=request.stop_token_ids,
        ignore_eos=request.ignore_eos,
        max_tokens=max_tokens,
        min_tokens=request.min_tokens,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        skip_special_tokens=request.skip_special_tokens,
        spaces_between_special_tokens=request.spaces_between_special_tokens,
        include_stop_str_in_output=request.include_stop_str_in_output,
        logit_bias=_logit_bias(request.logit_bias),
        allowed_token_ids=request.allowed_token_ids,
        bad_words=request.bad_words,
        structured_outputs=structured_outputs_of(request),
        output_kind=output_kind,
        extra_args=request.vllm_xargs,
        **knobs,
    )


def resolve_max_tokens(
    requested: int | None,
    prompt_len: int,
    max_model_len: int,
    *,
    default: int | None = None,
    param: str = "max_tokens",
) -> int:
    """max_tokens checked against the context window.

    None takes the model's default (generation_config max_new_tokens) capped by the room left,
    or all of the room left.
    """
    room = max_model_len - prompt_len
    if room <= 0:
        raise PromptTooLongError(prompt_len, max_model_len)
    if requested is None:
        return min(default, room) if default else room
    if requested > room:
        raise OpenAIError(
            # vLLM's wording, word for word: clients and tests match on it.
            f"'max_tokens' or 'max_completion_tokens' is too large: {requested}. "
            "This model's maximum context length is "
            f"{max_model_len} tokens and your request has {prompt_len} input tokens "
            f"({requested} > {max_model_len} - {prompt_len}).",
            400,
            param=param,
        )
    return requested
