"""Typed exceptions of the engine.

Bad requests raise `InvalidRequestError` (a `ValueError`), carrying the name of the offending
parameter so the API layer can build an OpenAI error (`param`, HTTP 400) without parsing
messages. Everything else that is not the caller's fault is an `EngineError`.
"""

from __future__ import annotations


class InvalidRequestError(ValueError):
    """The request itself is wrong; retrying it unchanged will fail again (HTTP 400)."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class PromptTooLongError(InvalidRequestError):
    """The prompt (plus requested tokens) does not fit the model's context window."""

    def __init__(
        self, num_prompt_tokens: int, max_model_len: int, *, param: str = "prompt"
    ) -> None:
        super().__init__(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"request has {num_prompt_tokens} input tokens. Please reduce the length of the "
            "input messages.",
            param=param,
        )
        self.num_prompt_tokens = num_prompt_tokens
        self.max_model_len = max_model_len


class PromptTextTooLongError(InvalidRequestError):
    """The prompt text is so long that no tokenization of it can fit the context window.

    Raised before tokenizing: tokenizing a 50 MB prompt only to refuse it took minutes and
    gigabytes. The bound is `MAX_CHARS_PER_TOKEN` characters per token, far above what any
    vocabulary packs into one token on real text.
    """

    def __init__(self, num_chars: int, max_model_len: int, *, param: str = "prompt") -> None:
        super().__init__(
            f"This model's maximum context length is {max_model_len} tokens, and your prompt "
            f"has {num_chars} characters: more than {MAX_CHARS_PER_TOKEN} characters per token "
            "of context, so it cannot fit. Please reduce the length of the input.",
            param=param,
        )
        self.num_chars = num_chars
        self.max_model_len = max_model_len


MAX_CHARS_PER_TOKEN = 64


def check_prompt_chars(text: str | int, max_model_len: int, *, param: str = "prompt") -> None:
    """Refuse, without tokenizing, a text (or a number of characters) that cannot fit
    `max_model_len` tokens."""
    num_chars = text if isinstance(text, int) else len(text)
    if num_chars > max_model_len * MAX_CHARS_PER_TOKEN:
        raise PromptTextTooLongError(num_chars, max_model_len, param=param)


class UnsupportedTaskError(InvalidRequestError):
    """The model cannot do what was asked (e.g. embeddings from a generative-only model)."""

    def __init__(self, task: str, supported: list[str], *, model: str | None = None) -> None:
        name = f"Model {model!r}" if model else "This model"
        super().__init__(
            f"{name} does not support the {task!r} task; it supports: {', '.join(supported)}.",
            param="model",
        )
        self.task = task
        self.supported = supported


class ParallelConfigError(InvalidRequestError):
    """A tensor- or data-parallel setting the model or the machine cannot take (the heads or
    the vocabulary do not divide by the size, too few devices); the message names the flag."""


class UnsupportedModelError(ValueError):
    """The model folder describes an architecture or format the engine cannot load."""


class EngineError(RuntimeError):
    """The engine failed for a reason that is not the request's fault (HTTP 500)."""


class EngineDeadError(EngineError):
    """The engine loop has stopped; no further requests can be served (HTTP 503)."""


class EngineOverloadedError(EngineError):
    """The bounded waiting queue is full; the client should retry later (HTTP 503)."""
