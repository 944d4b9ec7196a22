"""Prompt shapes the engine accepts (vLLM's names): a string, a text dict or token ids."""

from __future__ import annotations

from typing import Any, TypedDict

from mono_llm.core.errors import InvalidRequestError


class TextPrompt(TypedDict, total=False):
    """A text prompt, tokenized by the engine with the model's tokenizer."""

    prompt: str


class TokensPrompt(TypedDict, total=False):
    """A pre-tokenized prompt; `prompt` may carry its text for the output's `prompt` field."""

    prompt_token_ids: list[int]
    prompt: str


class EncoderDecoderPrompt(TypedDict, total=False):
    """An encoder–decoder request (Whisper): the encoder input, already preprocessed (a
    log-mel feature tensor [num_mel_bins, frames]), and the decoder prompt's token ids."""

    encoder_features: Any
    prompt_token_ids: list[int]
    prompt: str


PromptType = str | TextPrompt | TokensPrompt | EncoderDecoderPrompt


def encoder_features_of(prompt: Any) -> Any:
    """The prompt's encoder input (None for decoder-only prompts)."""
    if isinstance(prompt, dict):
        return prompt.get("encoder_features")
    return None


def parse_prompt(prompt: Any) -> tuple[str | None, list[int] | None]:
    """Split a prompt into (text, token_ids); exactly one is needed to run it."""
    if isinstance(prompt, str):
        return prompt, None
    if isinstance(prompt, dict):
        token_ids = prompt.get("prompt_token_ids")
        text = prompt.get("prompt")
        if token_ids is not None:
            if not isinstance(token_ids, (list, tuple)) or not all(
                isinstance(t, int) and not isinstance(t, bool) for t in token_ids
            ):
                raise InvalidRequestError(
                    "prompt_token_ids must be a list of integers.", param="prompt_token_ids"
                )
            return (text if isinstance(text, str) else None), list(token_ids)
        if isinstance(text, str):
            return text, None
    if isinstance(prompt, (list, tuple)) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in prompt
    ):
        return None, list(prompt)
    raise InvalidRequestError(
        "A prompt must be a string, {'prompt': str} or {'prompt_token_ids': list[int]}.",
        param="prompt",
    )
