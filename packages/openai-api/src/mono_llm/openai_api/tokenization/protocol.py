"""Request and response models of POST /tokenize and POST /detokenize (vLLM's shapes)."""

from __future__ import annotations

from typing import Any

from pydantic import model_validator

from mono_llm.openai_api.chat_completion.protocol import ChatMessage
from mono_llm.openai_api.protocol import OpenAIBaseModel


class TokenizeRequest(OpenAIBaseModel):
    """Either `prompt` (completion form) or `messages` (chat form, through the template)."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool | None = None  # default: true for prompt, false for messages
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    return_token_strs: bool | None = False
    tools: list[dict[str, Any]] | None = None
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("Give exactly one of prompt and messages.")
        return self


class TokenizeResponse(OpenAIBaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(OpenAIBaseModel):
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(OpenAIBaseModel):
    prompt: str
