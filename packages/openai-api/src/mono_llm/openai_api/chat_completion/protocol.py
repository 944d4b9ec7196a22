"""Request and response models of POST /v1/chat/completions (OpenAI's plus vLLM's extras)."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import Field, field_validator, model_serializer

from mono_llm.openai_api.protocol import OpenAIBaseModel, SamplingExtras, UsageInfo


class ChatMessage(OpenAIBaseModel):
    """One message of the conversation; extra keys (name, tool_call_id, ...) pass through to
    the chat template."""

    role: str
    # A string, or OpenAI's list of content parts ({"type": "text", "text": ...}, ...).
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None


class ChatCompletionRequest(SamplingExtras):
    messages: list[ChatMessage]
    model: str | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = Field(default=None, ge=0)
    max_tokens: int | None = Field(default=None, deprecated=False)
    max_completion_tokens: int | None = None
    tools: list[dict[str, Any]] | None = None
    # None: OpenAI's default, "auto" when tools are given.
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = True
    # OpenAI's reasoning knob; as vLLM, handed to the chat template (with enable_thinking
    # false for "none" unless chat_template_kwargs sets it).
    reasoning_effort: str | None = None
    # vLLM extras specific to chat
    echo: bool = False
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    documents: list[dict[str, str]] | None = None
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    @field_validator("messages")
    @classmethod
    def _some_messages(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if not messages:
            raise ValueError("messages must not be empty.")
        return messages

    def check_combinations(self) -> None:
        super().check_combinations()
        if self.top_logprobs and not self.logprobs:
            from mono_llm.openai_api.errors import OpenAIError

            raise OpenAIError("top_logprobs needs logprobs=true.", 400, param="top_logprobs")

    @property
    def requested_max_tokens(self) -> int | None:
        # max_completion_tokens is OpenAI's current name; max_tokens the deprecated one.
        return (
            self.max_completion_tokens
            if self.max_completion_tokens is not None
            else self.max_tokens
        )


# Chat request fields that the Responses and Messages APIs accept as extras (vLLM's sampling
# extras through `extra_body`); the others have names of their own there.
PASSTHROUGH_FIELDS = frozenset(ChatCompletionRequest.model_fields) - {
    "messages", "tools", "tool_choice", "response_format", "max_tokens", "max_completion_tokens",
    "stream", "stream_options", "n", "best_of", "use_beam_search", "echo", "logprobs",
    "top_logprobs", "prompt_logprobs", "chat_template",
}  # fmt: skip


def passthrough_extras(extras: dict[str, Any] | None, body: dict[str, Any]) -> dict[str, Any]:
    """`body` plus the chat fields among a request's unknown fields (`body` wins)."""
    return {**{k: v for k, v in (extras or {}).items() if k in PASSTHROUGH_FIELDS}, **body}


class ChatCompletionLogProb(OpenAIBaseModel):
    token: str
    logprob: float = -9999.0
    bytes: list[int] | None = None


class ChatCompletionLogProbsContent(ChatCompletionLogProb):
    top_logprobs: list[ChatCompletionLogProb] = Field(default_factory=list)


class ChatCompletionLogProbs(OpenAIBaseModel):
    content: list[ChatCompletionLogProbsContent] | None = None


class ChatResponseMessage(OpenAIBaseModel):
    role: str = "assistant"
    content: str | None = None
    refusal: str | None = None  # OpenAI's field; never set here
    # With --reasoning-parser: the thinking, under vLLM's older and newer names.
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)

    @model_serializer(mode="wrap")
    def _drop_empty_tool_calls(self, handler: Any) -> dict[str, Any]:
        # As vLLM and OpenAI: a reply without calls has no `tool_calls` key (the openai
        # client then reads None, and code testing `if message.tool_calls` works either way).
        data = handler(self)
        if not data.get("tool_calls"):
            data.pop("tool_calls", None)
        return data


class ChatCompletionResponseChoice(OpenAIBaseModel):
    index: int
    message: ChatResponseMessage
    logprobs: ChatCompletionLogProbs | None = None
    finish_reason: str | None = "stop"
    stop_reason: int | str | None = None


class ChatCompletionResponse(OpenAIBaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatCompletionResponseChoice]
    usage: UsageInfo
    prompt_logprobs: list[dict[int, Any] | None] | None = None


class DeltaMessage(OpenAIBaseModel):
    role: str | None = None
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[dict[str, Any]] | None = None

    @model_serializer(mode="wrap")
    def _drop_nulls(self, handler: Any) -> dict[str, Any]:
        # OpenAI's deltas carry only what changed: {"content": "Hel"}, not four nulls.
        return {k: v for k, v in handler(self).items() if v is not None}


class ChatCompletionResponseStreamChoice(OpenAIBaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatCompletionLogProbs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionStreamResponse(OpenAIBaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatCompletionResponseStreamChoice]
    usage: UsageInfo | None = None
