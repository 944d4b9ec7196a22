"""Request and response models of POST /v1/completions (OpenAI's fields plus vLLM's extras)."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from mono_llm.openai_api.protocol import OpenAIBaseModel, SamplingExtras, UsageInfo


class CompletionRequest(SamplingExtras):
    model: str | None = None
    # A string, a list of strings, a list of token ids, or a list of token-id lists.
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0)
    max_tokens: int | None = 16
    suffix: str | None = None
    # vLLM extras specific to completions
    add_special_tokens: bool = True

    @model_validator(mode="before")
    @classmethod
    def _no_prompt_embeds(cls, data: Any) -> Any:
        # vLLM's `prompt_embeds` (base64 torch tensors) is not supported: say so by name
        # rather than "prompt: Field required". An OpenAIError is not a ValueError, so
        # pydantic lets it through to the error handler as is.
        if isinstance(data, dict) and data.get("prompt_embeds") is not None:
            from mono_llm.openai_api.errors import OpenAIError

            raise OpenAIError(
                "prompt_embeds is not supported by mono-llm; send `prompt` as text or token ids.",
                400,
                param="prompt_embeds",
            )
        return data

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, prompt: Any) -> Any:
        if isinstance(prompt, list) and len(prompt) == 0:
            raise ValueError("prompt must not be empty.")
        return prompt

    def prompts(self) -> list[str | list[int]]:
        """The prompts as a list: each a string or a list of token ids."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        assert isinstance(prompt, list)
        if all(isinstance(p, int) for p in prompt):
            return [list(prompt)]  # type: ignore[arg-type]
        return list(prompt)  # type: ignore[arg-type]


class CompletionLogProbs(OpenAIBaseModel):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)

    def extend(self, other: CompletionLogProbs) -> None:
        self.text_offset.extend(other.text_offset)
        self.token_logprobs.extend(other.token_logprobs)
        self.tokens.extend(other.tokens)
        self.top_logprobs.extend(other.top_logprobs)


class CompletionResponseChoice(OpenAIBaseModel):
    index: int
    text: str
    logprobs: CompletionLogProbs | None = None
    finish_reason: str | None = None
    # vLLM: the stop string or token id that ended the sequence (None for EOS / length).
    stop_reason: int | str | None = None
    prompt_logprobs: list[dict[int, Any] | None] | None = None


class CompletionResponse(OpenAIBaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionResponseChoice]
    usage: UsageInfo


class CompletionResponseStreamChoice(OpenAIBaseModel):
    index: int
    text: str
    logprobs: CompletionLogProbs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class CompletionStreamResponse(OpenAIBaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionResponseStreamChoice]
    usage: UsageInfo | None = None
