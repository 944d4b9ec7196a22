"""What completions and chat share between the HTTP request and the engine: prompt
tokenization, request ids, starting engine requests (so that validation and overload errors
become HTTP statuses before a stream starts), and accumulating streamed deltas per choice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.requests import Request

from mono_llm.core.errors import PromptTooLongError, check_prompt_chars
from mono_llm.core.outputs import CompletionOutput, Logprob, RequestOutput
from mono_llm.core.sampling_params import SamplingParams
from mono_llm.openai_api.errors import OpenAIError

logger = logging.getLogger("mono_llm.openai_api.requests")

_T = TypeVar("_T")
# Bodies past this size are templated and tokenized in a worker thread: a multi-megabyte prompt
# takes the tokenizer (and a chat template) hundreds of milliseconds or more, which on the event
# loop would stall every other stream. Small bodies stay inline, where a thread hop would cost
# more than the work.
OFF_LOOP_BODY_BYTES = 64 * 1024

if TYPE_CHECKING:
    from mono_llm.openai_api.metrics import ServerMetrics
    from mono_llm.openai_api.served_models import ServedModel


@dataclass(slots=True)
class PromptInput:
    token_ids: list[int]
    text: str | None  # None when the client sent token ids
    # Preprocessed images (mono_llm.multimodal ProcessedImage), in placeholder order.
    images: list[Any] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        """Prompt length the engine sees: each image placeholder widened to its tokens."""
        extra = sum(int(image.num_tokens) - 1 for image in self.images)
        return len(self.token_ids) + extra

    def engine_prompt(self) -> dict[str, Any]:
        prompt: dict[str, Any] = {"prompt_token_ids": self.token_ids}
        if self.images:
            prompt["multi_modal_data"] = {"image": self.images}
        return prompt


def tokenize_prompt(
    model: ServedModel,
    prompt: str | list[int],
    *,
    add_special_tokens: bool,
    truncate_prompt_tokens: int | None,
    param: str = "prompt",
) -> PromptInput:
    """Token ids of one prompt, truncated from the left when asked, checked against the
    context window and the vocabulary."""
    tokenizer = model.tokenizer
    if isinstance(prompt, str):
        if truncate_prompt_tokens is None:
            check_prompt_chars(prompt, model.max_model_len, param=param)
        token_ids = list(tokenizer(prompt, add_special_tokens=add_special_tokens).input_ids)
        text: str | None = prompt
    else:
        token_ids = list(prompt)
        vocab_size = len(tokenizer)
        bad = [t for t in token_ids if t < 0 or t >= vocab_size]
        if bad:
            raise OpenAIError(
                f"Token id {bad[0]} is out of vocabulary (size {vocab_size}).", 400, param=param
            )
        text = None
    if truncate_prompt_tokens is not None:
        if truncate_prompt_tokens == 0 or truncate_prompt_tokens > model.max_model_len:
            # 0 would keep everything (`ids[-0:]`); past the window it could never fit (vLLM
            # refuses both too).
            raise OpenAIError(
                f"truncate_prompt_tokens={truncate_prompt_tokens} must be -1 (the context "
                f"window) or between 1 and max_model_len={model.max_model_len}.",
                400,
                param="truncate_prompt_tokens",
            )
        keep = model.max_model_len if truncate_prompt_tokens == -1 else truncate_prompt_tokens
        if len(token_ids) > keep:
            token_ids = token_ids[-keep:]
            text = None  # the text no longer matches; decode it when needed
    if not token_ids:
        raise OpenAIError("The prompt is empty.", 400, param=param)
    if len(token_ids) >= model.max_model_len:
        raise PromptTooLongError(len(token_ids), model.max_model_len, param=param)
    return PromptInput(token_ids=token_ids, text=text)


async def run_off_loop_if_large(
    raw_request: Request | None, work: Callable[..., _T], *args: Any, **kwargs: Any
) -> _T:
    """`work(*args, **kwargs)`, in a worker thread when the request body is large."""
    length = raw_request.headers.get("content-length") if raw_request is not None else None
    if length is not None and length.isdigit() and int(length) > OFF_LOOP_BODY_BYTES:
        return await asyncio.to_thread(work, *args, **kwargs)
    return work(*args, **kwargs)


# Client-chosen request ids (the body's request_id, X-Request-Id) are echoed in every
# response and chunk and kept in logs: longer ones are cut to this many characters.
MAX_REQUEST_ID_CHARS = 256


def base_request_id(raw_request: Request | None, body_request_id: str | None) -> str:
    """The id of one API request: the body's request_id, the X-Request-Id header, or new
    (a client's id cut to MAX_REQUEST_ID_CHARS)."""
    if body_request_id:
        return body_request_id[:MAX_REQUEST_ID_CHARS]
    if raw_request is not None:
        header = raw_request.headers.get("x-request-id")
        if header:
            return header[:MAX_REQUEST_ID_CHARS]
    return uuid.uuid4().hex


async def start_engine_request(
    model: ServedModel,
    prompt: PromptInput,
    params: SamplingParams,
    request_id: str,
    *,
    priority: int = 0,
    metrics: ServerMetrics | None = None,
) -> AsyncIterator[RequestOutput]:
    """Submit one engine request and wait for its first output.

    The engine raises validation and overload errors on the first step of its generator;
    waiting for it here turns them into HTTP errors before a streaming response has sent
    its 200 status. The returned iterator yields that first output again, then the rest.
    """
    # A suffix keeps engine ids unique even when clients reuse X-Request-Id values.
    engine_id = f"{request_id}-{uuid.uuid4().hex[:8]}"
    if model.log_requests:
        shown = prompt.token_ids[: model.max_log_len] if model.max_log_len else prompt.token_ids
        logger.info(
            "request %s for %s: %d prompt tokens %s, %s",
            engine_id,
            model.name,
            len(prompt.token_ids),
            shown,
            params,
        )
    generator = model.engine.generate(prompt.engine_prompt(), params, engine_id, priority=priority)
    timer = metrics.request_timer(model.name) if metrics is not None else None
    return await await_first_output(generator, timer)


async def await_first_output(
    generator: AsyncGenerator[RequestOutput, None], timer: Any = None
) -> AsyncGenerator[RequestOutput, None]:
    """Wait for an engine generator's first output, so that the engine's refusals raise
    here; the returned generator yields that output again, then the rest, and closes the
    engine's (aborting its request) as soon as its consumer stops."""
    try:
        first = await generator.__anext__()
    except StopAsyncIteration:
        first = None
    except BaseException:
        await generator.aclose()
        raise
    return _replay(first, generator, timer)


async def _replay(
    first: RequestOutput | None,
    generator: AsyncGenerator[RequestOutput, None],
    timer: Any,
) -> AsyncGenerator[RequestOutput, None]:
    finished = False
    try:
        if first is not None:
            if timer is not None:
                timer.observe(first)
            finished = first.finished
            yield first
        async for output in generator:
            if timer is not None:
                timer.observe(output)
            finished = output.finished
            yield output
    finally:
        if timer is not None and not finished:
            timer.aborted()
        with contextlib.suppress(Exception):
            await generator.aclose()


@dataclass(slots=True)
class ChoiceState:
    """One choice's generated text, tokens and logprobs, accumulated from delta outputs."""

    index: int
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, Logprob]] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    started: bool = False  # whether the first stream chunk (role / echo) was sent

    def add(self, delta: CompletionOutput) -> None:
        self.text.append(delta.text)
        self.token_ids.extend(delta.token_ids)
        if delta.logprobs:
            self.logprobs.extend(delta.logprobs)
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason
            self.stop_reason = delta.stop_reason

    @property
    def full_text(self) -> str:
        return "".join(self.text)
