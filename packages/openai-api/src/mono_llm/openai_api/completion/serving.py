"""POST /v1/completions: prompts -> engine requests -> `text_completion` objects or chunks.

Each prompt of the request is one engine request generating n choices; choice indexes are
`prompt_index * n + output.index`, as vLLM numbers them. Outputs are always requested as
deltas: streaming forwards them, non-streaming accumulates them, so both paths share one
engine interface and the metrics see every token as it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator

from starlette.requests import Request

from mono_llm.core.outputs import RequestOutput
from mono_llm.openai_api.beam_search import start_beam_search
from mono_llm.openai_api.completion.protocol import (
    CompletionLogProbs,
    CompletionRequest,
    CompletionResponse,
    CompletionResponseChoice,
    CompletionResponseStreamChoice,
    CompletionStreamResponse,
)
from mono_llm.openai_api.engine_requests import (
    ChoiceState,
    PromptInput,
    base_request_id,
    run_off_loop_if_large,
    start_engine_request,
    tokenize_prompt,
)
from mono_llm.openai_api.errors import OpenAIError
from mono_llm.openai_api.logprobs import (
    TokenText,
    completion_logprobs,
    next_text_offset,
    prompt_logprobs_json,
)
from mono_llm.openai_api.sampling import build_sampling_params, resolve_max_tokens
from mono_llm.openai_api.served_models import ServedModel
from mono_llm.openai_api.serving_base import ServingBase
from mono_llm.openai_api.streaming import merge_async_iterators


class CompletionServing(ServingBase):
    async def start(
        self, request: CompletionRequest, raw_request: Request | None
    ) -> tuple[ServedModel, str, list[PromptInput], list[AsyncIterator[RequestOutput]]]:
        """Validate, tokenize and submit every prompt; errors here are HTTP errors."""
        request.check_combinations()
        if request.suffix is not None:
            raise OpenAIError("suffix is not supported", 400, param="suffix")
        model = self.resolve_model(request.model)
        request_id = f"cmpl-{base_request_id(raw_request, request.request_id)}"
        # Each prompt is one engine request: a batch bigger than the whole waiting queue could
        # never be admitted, so it is a bad request (400), not "overloaded, retry" (503).
        bound = model.engine.engine_config.scheduler_config.max_waiting_requests
        num_prompts = len(request.prompts())
        if bound is not None and num_prompts > bound:
            raise OpenAIError(
                f"The request has {num_prompts} prompts, more than the server's waiting-queue "
                f"capacity of {bound} requests (--max-waiting-requests); split the batch.",
                400,
                param="prompt",
            )
        prompts = await run_off_loop_if_large(
            raw_request,
            lambda: [
                tokenize_prompt(
                    model,
                    prompt,
                    add_special_tokens=request.add_special_tokens,
                    truncate_prompt_tokens=request.truncate_prompt_tokens,
                )
                for prompt in request.prompts()
            ],
        )
        prompt_logprobs = request.prompt_logprobs
        if request.echo and request.logprobs is not None:
            prompt_logprobs = request.logprobs
        streams: list[AsyncIterator[RequestOutput]] = []
        try:
            # Every prompt is checked before any request starts: a bad third prompt must not
            # leave the first two's submissions created and never awaited.
            planned = []
            for prompt in prompts:
                max_tokens = resolve_max_tokens(
                    request.max_tokens,
                    len(prompt.token_ids),
                    model.max_model_len,
                    default=model.default_sampling.get("max_tokens"),
                )
                params = build_sampling_params(
                    request,
                    model.default_sampling,
                    max_tokens=max_tokens,
                    logprobs=request.logprobs,
                    prompt_logprobs=prompt_logprobs,
                )
                planned.append((prompt, max_tokens, params))
            submissions = [
                start_beam_search(model, prompt, request, max_tokens, f"{request_id}-{i}")
                if request.use_beam_search
                else start_engine_request(
                    model,
                    prompt,
                    params,
                    f"{request_id}-{i}",
                    priority=request.priority,
                    metrics=self.metrics,
                )
                for i, (prompt, max_tokens, params) in enumerate(planned)
            ]
            results = await asyncio.gather(*submissions, return_exceptions=True)
            streams = [r for r in results if not isinstance(r, BaseException)]
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                raise errors[0]
        except BaseException:
            for stream in streams:
                with contextlib.suppress(Exception):
                    await stream.aclose()  # type: ignore[attr-defined]
            raise
        return model, request_id, prompts, streams

    # ------------------------------------------------------------------ non-streaming
    async def complete(
        self, request: CompletionRequest, raw_request: Request | None
    ) -> CompletionResponse:
        model, request_id, prompts, streams = await self.start(request, raw_request)
        n = request.n
        states: dict[int, ChoiceState] = {}
        prompt_outputs: dict[int, RequestOutput] = {}
        async for prompt_index, output in merge_async_iterators(*streams):
            if prompt_index not in prompt_outputs:
                prompt_outputs[prompt_index] = output
            elif output.prompt_logprobs:
                prompt_outputs[prompt_index].prompt_logprobs = output.prompt_logprobs
            for completion in output.outputs:
                index = prompt_index * n + completion.index
                states.setdefault(index, ChoiceState(index)).add(completion)
        token_text = TokenText(model.tokenizer, bool(request.return_tokens_as_token_ids))
        choices = []
        for index in sorted(states):
            state = states[index]
            prompt_index = index // n
            prompt = prompts[prompt_index]
            text = state.full_text
            logprobs = None
            if request.echo:
                prompt_text = self._prompt_text(model, prompt)
                text = prompt_text + text
            if request.logprobs is not None:
                logprobs = CompletionLogProbs()
                offset = 0
                if request.echo:
                    first = prompt_outputs.get(prompt_index)
                    positions = (first.prompt_logprobs if first else None) or [None] * len(
                        prompt.token_ids
                    )
                    logprobs = completion_logprobs(
                        prompt.token_ids, positions, token_text, num_top=request.logprobs
                    )
                    offset = next_text_offset(logprobs)
                if state.logprobs:
                    logprobs.extend(
                        completion_logprobs(
                            state.token_ids,
                            state.logprobs,
                            token_text,
                            num_top=request.logprobs,
                            initial_text_offset=offset,
                        )
                    )
            prompt_logprobs = None
            if request.prompt_logprobs is not None and prompt_index in prompt_outputs:
                prompt_logprobs = prompt_logprobs_json(
                    prompt_outputs[prompt_index].prompt_logprobs, token_text
                )
            choices.append(
                CompletionResponseChoice(
                    index=index,
                    text=text,
                    logprobs=logprobs,
                    finish_reason=state.finish_reason,
                    stop_reason=state.stop_reason,
                    prompt_logprobs=prompt_logprobs,
                )
            )
        prompt_tokens = sum(len(p.token_ids) for p in prompts)
        completion_tokens = sum(len(s.token_ids) for s in states.values())
        return CompletionResponse(
            id=request_id,
            model=model.name,
            choices=choices,
            usage=self.usage(prompt_tokens, completion_tokens, prompt_outputs.values()),
        )

    @staticmethod
    def _prompt_text(model: ServedModel, prompt: PromptInput) -> str:
        if prompt.text is None:
            prompt.text = model.tokenizer.decode(prompt.token_ids)
        return prompt.text

    # ------------------------------------------------------------------ streaming
    async def stream(
        self, request: CompletionRequest, raw_request: Request | None
    ) -> AsyncGenerator[str, None]:
        """Start the request (errors raise here), then return the SSE event generator."""
        started = await self.start(request, raw_request)
        return self._events(request, *started)

    def _events(
        self,
        request: CompletionRequest,
        model: ServedModel,
        request_id: str,
        prompts: list[PromptInput],
        streams: list[AsyncIterator[RequestOutput]],
    ) -> AsyncGenerator[str, None]:
        merged = merge_async_iterators(*streams)
        chunks = self._chunks(request, model, request_id, prompts, merged)
        return self.sse_stream(chunks, merged.aclose)

    async def _chunks(
        self,
        request: CompletionRequest,
        model: ServedModel,
        request_id: str,
        prompts: list[PromptInput],
        merged: AsyncIterator[tuple[int, RequestOutput]],
    ) -> AsyncGenerator[CompletionStreamResponse, None]:
        n = request.n
        include_usage, continuous = self.stream_usage(request)
        token_text = TokenText(model.tokenizer, bool(request.return_tokens_as_token_ids))
        states: dict[int, ChoiceState] = {}
        firsts: dict[int, RequestOutput] = {}  # first output per prompt (cached tokens)
        offsets: dict[int, int] = {}
        prompt_tokens = sum(len(p.token_ids) for p in prompts)
        async for prompt_index, output in merged:
            firsts.setdefault(prompt_index, output)
            prompt = prompts[prompt_index]
            for completion in output.outputs:
                index = prompt_index * n + completion.index
                state = states.setdefault(index, ChoiceState(index))
                state.add(completion)
                text = completion.text
                logprobs = None
                if request.echo and not state.started:
                    echo_text = self._prompt_text(model, prompt)
                    if request.logprobs is not None:
                        positions = output.prompt_logprobs or [None] * len(prompt.token_ids)
                        logprobs = completion_logprobs(
                            prompt.token_ids, positions, token_text, num_top=request.logprobs
                        )
                        offsets[index] = next_text_offset(logprobs)
                    text = echo_text + text
                if request.logprobs is not None and completion.logprobs:
                    generated = completion_logprobs(
                        completion.token_ids,
                        completion.logprobs,
                        token_text,
                        num_top=request.logprobs,
                        initial_text_offset=offsets.get(index, 0),
                    )
                    offsets[index] = next_text_offset(generated, offsets.get(index, 0))
                    if logprobs is None:
                        logprobs = generated
                    else:
                        logprobs.extend(generated)
                elif request.logprobs is not None and logprobs is None:
                    logprobs = CompletionLogProbs()
                state.started = True
                # One chunk per output that carries tokens, even when its text is empty: a
                # token that ends inside a UTF-8 character, or text held back by a stop
                # string, still reaches the client (with its logprobs) when it is generated.
                # Only an output with neither text nor tokens has nothing to say.
                if not text and not completion.token_ids and completion.finish_reason is None:
                    continue
                chunk = CompletionStreamResponse(
                    id=request_id,
                    model=model.name,
                    choices=[
                        CompletionResponseStreamChoice(
                            index=index,
                            text=text,
                            logprobs=logprobs,
                            finish_reason=completion.finish_reason,
                            stop_reason=completion.stop_reason,
                        )
                    ],
                )
                if continuous:
                    generated_tokens = sum(len(s.token_ids) for s in states.values())
                    chunk.usage = self.usage(prompt_tokens, generated_tokens, firsts.values())
                yield chunk
        if include_usage:
            completion_tokens = sum(len(s.token_ids) for s in states.values())
            final = CompletionStreamResponse(
                id=request_id,
                model=model.name,
                choices=[],
                usage=self.usage(prompt_tokens, completion_tokens, firsts.values()),
            )
            yield final
