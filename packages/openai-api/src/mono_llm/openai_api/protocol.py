"""Protocol pieces shared by the endpoint families: usage, stream options, models list, and
vLLM's extra sampling parameters (accepted in the body or through the openai client's
`extra_body`, which merges them into the body).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class OpenAIBaseModel(BaseModel):
    # Unknown fields are accepted and ignored, as vLLM and OpenAI do, so newer clients that
    # send fields this server does not know (metadata, store, ...) keep working.
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class StreamOptions(OpenAIBaseModel):
    include_usage: bool | None = True
    continuous_usage_stats: bool | None = False


class PromptTokensDetails(OpenAIBaseModel):
    cached_tokens: int | None = None


class UsageInfo(OpenAIBaseModel):
    prompt_tokens: int = 0
    total_tokens: int = 0
    completion_tokens: int | None = 0
    prompt_tokens_details: PromptTokensDetails | None = None


def usage_info(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None) -> UsageInfo:
    """Usage with `prompt_tokens_details.cached_tokens` when the server reports it."""
    return UsageInfo(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens_details=None
        if cached_tokens is None
        else PromptTokensDetails(cached_tokens=cached_tokens),
    )


class ModelPermission(OpenAIBaseModel):
    id: str = Field(default_factory=lambda: f"modelperm-{time.time_ns():x}")
    object: str = "model_permission"
    created: int = Field(default_factory=lambda: int(time.time()))
    allow_create_engine: bool = False
    allow_sampling: bool = True
    allow_logprobs: bool = True
    allow_search_indices: bool = False
    allow_view: bool = True
    allow_fine_tuning: bool = False
    organization: str = "*"
    group: str | None = None
    is_blocking: bool = False


class ModelCard(OpenAIBaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "mono-llm"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None
    permission: list[ModelPermission] = Field(default_factory=list)


class ModelList(OpenAIBaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard] = Field(default_factory=list)


class JsonSchemaFormat(OpenAIBaseModel):
    name: str | None = None
    description: str | None = None
    # `schema` shadows a BaseModel attribute, hence the alias.
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(OpenAIBaseModel):
    # structural_tag (vLLM's): its other keys (`structures` + `triggers`, or `format`) are
    # kept as extra fields and handed to the grammar compiler whole.
    type: Literal["text", "json_object", "json_schema", "structural_tag"]
    json_schema: JsonSchemaFormat | None = None


class SamplingExtras(OpenAIBaseModel):
    """Sampling fields common to completions and chat, OpenAI's and vLLM's extras.

    Fields whose default comes from the model's generation_config.json (temperature, top_p,
    top_k, min_p, repetition_penalty) default to None here, meaning "not set by the request".
    """

    frequency_penalty: float | None = 0.0
    presence_penalty: float | None = 0.0
    logit_bias: dict[str, float] | None = None
    n: int = 1
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    user: str | None = None
    response_format: ResponseFormat | None = None
    # vLLM's extra sampling parameters
    best_of: int | None = None
    use_beam_search: bool = False
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    length_penalty: float = 1.0
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    min_tokens: int = 0
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    truncate_prompt_tokens: int | None = Field(default=None, ge=-1)
    prompt_logprobs: int | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    structured_outputs: dict[str, Any] | None = None
    guided_json: str | dict[str, Any] | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    priority: int = 0
    request_id: str | None = None
    return_tokens_as_token_ids: bool | None = None
    logits_processors: list[Any] | None = None
    vllm_xargs: dict[str, Any] | None = None

    def check_combinations(self) -> None:
        """Cross-field checks, as 400s naming the field (pydantic's model validators could
        only name the whole body)."""
        from mono_llm.openai_api.errors import OpenAIError

        if self.stream_options is not None and not self.stream:
            raise OpenAIError(
                "Stream options can only be defined when `stream=True`.",
                400,
                param="stream_options",
            )
        if self.stream and self.best_of is not None and self.best_of != self.n:
            # The best n of best_of candidates are known only at the end: nothing to stream.
            raise OpenAIError(
                "best_of different from n is not supported with stream=true.", 400, param="best_of"
            )
        if self.use_beam_search:
            from mono_llm.openai_api.beam_search import check_beam_search_request

            check_beam_search_request(self)
        if self.logits_processors:
            raise OpenAIError(
                "logits_processors is not supported by mono-llm.", 400, param="logits_processors"
            )
