"""POST /v1/chat/completions: messages -> chat template -> one engine request -> choices.

Streaming sends, per choice, a first chunk with the assistant role, then content deltas,
with finish_reason on the last one; then the usage chunk when asked, then `data: [DONE]`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

from starlette.requests import Request

from mono_llm.core.outputs import RequestOutput
from mono_llm.openai_api.chat_completion.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatCompletionResponseStreamChoice,
    ChatCompletionStreamResponse,
    ChatResponseMessage,
    DeltaMessage,
)
from mono_llm.openai_api.engine_requests import (
    ChoiceState,
    PromptInput,
    base_request_id,
    start_engine_request,
    tokenize_prompt,
)
from mono_llm.openai_api.errors import from_exception
from mono_llm.openai_api.logprobs import TokenText, chat_logprobs, prompt_logprobs_json
from mono_llm.openai_api.metrics import ServerMetrics
from mono_llm.openai_api.model_registry import ModelRegistry, ServedModel
from mono_llm.openai_api.protocol import UsageInfo
from mono_llm.openai_api.sampling import build_sampling_params, resolve_max_tokens
from mono_llm.openai_api.streaming import SSE_DONE, sse_event

ASSISTANT = "assistant"


def render_chat_prompt(model: ServedModel, request: ChatCompletionRequest) -> str:
    """The prompt text the chat template makes of the request's messages."""
    messages = [m.model_dump(exclude_none=True) for m in request.messages]
    # Tools reach the template so models that describe tools in the prompt see them; with
    # tool_choice "none" OpenAI still lets the model know them, and so do we.
    return model.chat_template.render(
        model.tokenizer,
        messages,
        add_generation_prompt=request.add_generation_prompt,
        continue_final_message=request.continue_final_message,
        tools=request.tools,
        documents=request.documents,
        chat_template_kwargs=request.chat_template_kwargs,
        request_template=request.chat_template,
    )


class ChatServing:
    def __init__(self, registry: ModelRegistry, metrics: ServerMetrics | None) -> None:
        self.registry = registry
        self.metrics = metrics

    async def start(
        self, request: ChatCompletionRequest, raw_request: Request | None
    ) -> tuple[ServedModel, str, PromptInput, AsyncIterator[RequestOutput]]:
        model = self.registry.resolve(request.model)
        request_id = f"chatcmpl-{base_request_id(raw_request, request.request_id)}"
        prompt_text = render_chat_prompt(model, request)
        # The template already wrote the special tokens (BOS...): do not add them twice.
        prompt = tokenize_prompt(
            model,
            prompt_text,
            add_special_tokens=request.add_special_tokens,
            truncate_prompt_tokens=request.truncate_prompt_tokens,
            param="messages",
        )
        param = (
            "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
        )
        max_tokens = resolve_max_tokens(
            request.requested_max_tokens,
            len(prompt.token_ids),
            model.max_model_len,
            default=model.default_sampling.get("max_tokens"),
            param=param,
        )
        logprobs = (request.top_logprobs or 0) if request.logprobs else None
        params = build_sampling_params(
            request,
            model.default_sampling,
            max_tokens=max_tokens,
            logprobs=logprobs,
            prompt_logprobs=request.prompt_logprobs,
        )
        stream = await start_engine_request(
            model, prompt, params, request_id, priority=request.priority, metrics=self.metrics
        )
        return model, request_id, prompt, stream

    def _echo_text(self, request: ChatCompletionRequest) -> str:
        """vLLM's `echo`: the final assistant message being continued, sent back first."""
        if not request.echo or not request.messages:
            return ""
        last = request.messages[-1]
        if last.role != ASSISTANT:
            return ""
        content = last.content
        if isinstance(content, list):
            return "\n".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
        return content or ""

    # ------------------------------------------------------------------ non-streaming
    async def complete(
        self, request: ChatCompletionRequest, raw_request: Request | None
    ) -> ChatCompletionResponse:
        model, request_id, prompt, stream = await self.start(request, raw_request)
        states: dict[int, ChoiceState] = {}
        prompt_positions = None
        try:
            async for output in stream:
                if output.prompt_logprobs:
                    prompt_positions = output.prompt_logprobs
                for completion in output.outputs:
                    states.setdefault(completion.index, ChoiceState(completion.index)).add(
                        completion
                    )
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        token_text = TokenText(model.tokenizer, bool(request.return_tokens_as_token_ids))
        echo = self._echo_text(request)
        choices = []
        for index in sorted(states):
            state = states[index]
            logprobs = None
            if request.logprobs:
                logprobs = chat_logprobs(
                    state.token_ids, state.logprobs, token_text, num_top=request.top_logprobs or 0
                )
            choices.append(
                ChatCompletionResponseChoice(
                    index=index,
                    message=ChatResponseMessage(role=ASSISTANT, content=echo + state.full_text),
                    logprobs=logprobs,
                    finish_reason=state.finish_reason,
                    stop_reason=state.stop_reason,
                )
            )
        prompt_tokens = len(prompt.token_ids)
        completion_tokens = sum(len(s.token_ids) for s in states.values())
        return ChatCompletionResponse(
            id=request_id,
            model=model.name,
            choices=choices,
            prompt_logprobs=prompt_logprobs_json(prompt_positions, token_text)
            if request.prompt_logprobs is not None
            else None,
            usage=UsageInfo(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            ),
        )

    # ------------------------------------------------------------------ streaming
    async def stream(
        self, request: ChatCompletionRequest, raw_request: Request | None
    ) -> AsyncGenerator[str, None]:
        started = await self.start(request, raw_request)
        return self._events(request, *started)

    async def _events(
        self,
        request: ChatCompletionRequest,
        model: ServedModel,
        request_id: str,
        prompt: PromptInput,
        stream: AsyncIterator[RequestOutput],
    ) -> AsyncGenerator[str, None]:
        options = request.stream_options
        include_usage = bool(options and options.include_usage)
        continuous = include_usage and bool(options and options.continuous_usage_stats)
        token_text = TokenText(model.tokenizer, bool(request.return_tokens_as_token_ids))
        echo = self._echo_text(request)
        prompt_tokens = len(prompt.token_ids)
        states: dict[int, ChoiceState] = {}

        def usage() -> UsageInfo:
            generated = sum(len(s.token_ids) for s in states.values())
            return UsageInfo(
                prompt_tokens=prompt_tokens,
                completion_tokens=generated,
                total_tokens=prompt_tokens + generated,
            )

        def chunk(choice: ChatCompletionResponseStreamChoice) -> str:
            body = ChatCompletionStreamResponse(id=request_id, model=model.name, choices=[choice])
            if continuous:
                body.usage = usage()
            return sse_event(body)

        try:
            async for output in stream:
                for completion in output.outputs:
                    state = states.setdefault(completion.index, ChoiceState(completion.index))
                    if not state.started:
                        state.started = True
                        # OpenAI's first chunk of each choice: the role, empty content.
                        yield chunk(
                            ChatCompletionResponseStreamChoice(
                                index=completion.index,
                                delta=DeltaMessage(role=ASSISTANT, content=echo),
                            )
                        )
                    state.add(completion)
                    if not completion.text and completion.finish_reason is None:
                        continue
                    logprobs = None
                    if request.logprobs:
                        logprobs = chat_logprobs(
                            completion.token_ids,
                            completion.logprobs or [],
                            token_text,
                            num_top=request.top_logprobs or 0,
                        )
                    yield chunk(
                        ChatCompletionResponseStreamChoice(
                            index=completion.index,
                            delta=DeltaMessage(content=completion.text),
                            logprobs=logprobs,
                            finish_reason=completion.finish_reason,
                            stop_reason=completion.stop_reason,
                        )
                    )
            if include_usage:
                yield sse_event(
                    ChatCompletionStreamResponse(
                        id=request_id, model=model.name, choices=[], usage=usage()
                    )
                )
        except Exception as exc:  # the status line is sent already: report in-band
            yield sse_event(from_exception(exc).to_response())
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        yield SSE_DONE
