"""POST /v1/chat/completions: messages -> chat template -> one engine request -> choices.

Streaming sends, per choice, a first chunk with the assistant role, then content deltas (one
per engine step with new tokens, `{"content": ""}` while the text is held back), with
finish_reason on the last one; then the usage chunk when asked, then `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from starlette.requests import Request

from mono_llm.core.errors import check_prompt_chars
from mono_llm.core.outputs import CompletionOutput, RequestOutput
from mono_llm.core.sampling_params import StructuredOutputsParams
from mono_llm.openai_api.beam_search import start_beam_search
from mono_llm.openai_api.chat_completion.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatCompletionResponseStreamChoice,
    ChatCompletionStreamResponse,
    ChatResponseMessage,
    DeltaMessage,
)
from mono_llm.openai_api.chat_completion.tool_choice import (
    ForcedToolChoice,
    forced_tool_choice,
    new_tool_call_id,
)
from mono_llm.openai_api.chat_completion.tool_parsers import (
    AUTO,
    StreamingToolState,
    ToolParser,
    get_tool_parser,
    parser_name_for_template,
)
from mono_llm.openai_api.engine_requests import (
    ChoiceState,
    PromptInput,
    base_request_id,
    start_engine_request,
    tokenize_prompt,
)
from mono_llm.openai_api.errors import OpenAIError
from mono_llm.openai_api.logprobs import TokenText, chat_logprobs, prompt_logprobs_json
from mono_llm.openai_api.media import MediaInputs, image_limit
from mono_llm.openai_api.metrics import ServerMetrics
from mono_llm.openai_api.pooling.serving import model_tasks
from mono_llm.openai_api.protocol import UsageInfo
from mono_llm.openai_api.reasoning import ReasoningParser, ReasoningStream
from mono_llm.openai_api.sampling import build_sampling_params, resolve_max_tokens
from mono_llm.openai_api.served_models import ServedModel, ServedModels
from mono_llm.openai_api.serving_base import ServingBase
from mono_llm.openai_api.streaming import sse_event

ASSISTANT = "assistant"


def _tool_finish_reason(forced: ForcedToolChoice, reason: str | None) -> str | None:
    # OpenAI: "tool_calls" when the model chose to call tools; a function named by
    # tool_choice ends with "stop".
    if forced.mode == "required" and reason == "stop":
        return "tool_calls"
    return reason


def _text_length(messages: list[dict[str, Any]]) -> int:
    """Characters of the messages' text content."""
    total = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            texts = (part.get("text") for part in content if isinstance(part, dict))
            total += sum(len(text) for text in texts if isinstance(text, str))
    return total


def render_chat_prompt(
    model: ServedModel,
    request: ChatCompletionRequest,
    images: list[str] | None = None,
    image_placeholder: str = "",
) -> str:
    """The prompt text the chat template makes of the request's messages; `images` (a list,
    for models that take images) receives the image URLs in prompt order."""
    messages = [m.model_dump(exclude_none=True) for m in request.messages]
    # Messages whose text alone cannot fit the context window are refused before rendering.
    check_prompt_chars(_text_length(messages), model.max_model_len, param="messages")
    template_kwargs = dict(request.chat_template_kwargs or {})
    if request.reasoning_effort is not None:
        template_kwargs.setdefault("reasoning_effort", request.reasoning_effort)
        template_kwargs.setdefault("enable_thinking", request.reasoning_effort != "none")
    # Tools reach the template so models that describe tools in the prompt see them; with
    # tool_choice "none" OpenAI still lets the model know them, and so do we.
    return model.chat_template.render(
        model.tokenizer,
        messages,
        add_generation_prompt=request.add_generation_prompt,
        continue_final_message=request.continue_final_message,
        tools=request.tools,
        documents=request.documents,
        chat_template_kwargs=template_kwargs or None,
        request_template=request.chat_template,
        images=images,
        image_placeholder=image_placeholder,
    )


class ChatServing(ServingBase):
    def __init__(
        self,
        registry: ServedModels,
        metrics: ServerMetrics | None,
        *,
        prompt_tokens_details: bool = False,
        tool_parser: ToolParser | str | None = None,
        media: MediaInputs | None = None,
        reasoning_parser: ReasoningParser | None = None,
    ) -> None:
        super().__init__(registry, metrics, prompt_tokens_details=prompt_tokens_details)
        self.media = media  # image fetching and preprocessing (None: images refused)
        # --enable-auto-tool-choice --tool-call-parser: a parser, or "auto" (per model, from
        # its chat template)
        self.tool_parser = tool_parser
        self._template_parsers: dict[str, ToolParser | None] = {}
        self.reasoning_parser = reasoning_parser  # --reasoning-parser

    def model_tool_parser(self, model: ServedModel) -> ToolParser | None:
        """The tool parser for `model` (with `auto`, the one its chat template speaks)."""
        if self.tool_parser != AUTO:
            return self.tool_parser if isinstance(self.tool_parser, ToolParser) else None
        if model.name not in self._template_parsers:
            template = model.chat_template.template or getattr(
                model.tokenizer, "chat_template", None
            )
            if isinstance(template, dict):  # named templates: look at all of them
                template = "\n".join(str(t) for t in template.values())
            name = parser_name_for_template(template if isinstance(template, str) else None)
            self._template_parsers[model.name] = get_tool_parser(name) if name else None
        return self._template_parsers[model.name]

    def _auto_parser(
        self, request: ChatCompletionRequest, forced: ForcedToolChoice | None, model: ServedModel
    ) -> ToolParser | None:
        """The parser that reads tool calls out of free text, under tool_choice auto."""
        if forced is None and request.tools and request.tool_choice in (None, "auto"):
            return self.model_tool_parser(model)
        return None

    def _check_auto_tool_choice(
        self, request: ChatCompletionRequest, forced: ForcedToolChoice | None, model: ServedModel
    ) -> None:
        """vLLM's 400s for tool_choice auto: tools given (explicit "auto" or no tool_choice)
        on a server that cannot read calls out of the reply. Answering with plain content
        instead would let an agent loop wait forever for calls that are never parsed."""
        if request.tools == []:
            raise OpenAIError(
                "`tools` must not be an empty array. Either provide at least one tool or "
                "omit the field entirely.",
                400,
                param="tools",
            )
        if request.tool_choice == "auto" and not request.tools:
            raise OpenAIError(
                "When using `tool_choice`, `tools` must be set.", 400, param="tool_choice"
            )
        auto = forced is None and request.tools and request.tool_choice in (None, "auto")
        if auto and self.tool_parser == AUTO and self.model_tool_parser(model) is None:
            raise OpenAIError(
                f"--tool-call-parser auto found no known tool-call format in the chat template "
                f"of {model.name}; name the parser with --tool-call-parser.",
                400,
                param="tool_choice",
            )
        if auto and self.tool_parser is None:
            raise OpenAIError(
                '"auto" tool choice requires --enable-auto-tool-choice and '
                "--tool-call-parser to be set",
                400,
                param="tool_choice",
            )

    async def start(
        self, request: ChatCompletionRequest, raw_request: Request | None
    ) -> tuple[ServedModel, str, PromptInput, AsyncIterator[RequestOutput]]:
        request.check_combinations()
        model = self.resolve_model(request.model)
        max_logprobs = model.engine.model_config.max_logprobs
        if request.top_logprobs and max_logprobs != -1 and request.top_logprobs > max_logprobs:
            raise OpenAIError(
                f"top_logprobs={request.top_logprobs} is more than the maximum allowed "
                f"{max_logprobs}.",
                400,
                param="top_logprobs",
            )
        tasks = model_tasks(model)
        if tasks is not None:  # a pooling model: say so before its (missing) chat template
            tasks.check("generate", model=model.name)
        request_id = f"chatcmpl-{base_request_id(raw_request, request.request_id)}"
        forced = forced_tool_choice(request)
        self._check_auto_tool_choice(request, forced, model)

        takes_images = self.media is not None and image_limit(model) > 0
        image_urls: list[str] | None = [] if takes_images else None

        def template_and_tokenize() -> PromptInput:
            # The template already wrote the special tokens (BOS...): do not add them twice.
            placeholder = self.media.placeholder_text(model) if takes_images else ""
            return tokenize_prompt(
                model,
                render_chat_prompt(model, request, image_urls, placeholder),
                add_special_tokens=request.add_special_tokens,
                truncate_prompt_tokens=request.truncate_prompt_tokens,
                param="messages",
            )

        # The template renders in a worker process (with a deadline): wait for it off the loop.
        prompt = await asyncio.to_thread(template_and_tokenize)
        if image_urls:
            assert self.media is not None
            prompt.images = await self.media.load(model, image_urls)
        param = (
            "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
        )
        max_tokens = resolve_max_tokens(
            request.requested_max_tokens,
            prompt.num_tokens,
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
        if forced is not None:
            if params.structured_outputs is not None:
                raise OpenAIError(
                    "A forced tool_choice cannot be combined with response_format or "
                    "structured outputs.",
                    400,
                    param="tool_choice",
                )
            # Arguments are read by programs: compact JSON, no free whitespace between
            # tokens (a weak model would otherwise spend its budget on newlines).
            params.structured_outputs = StructuredOutputsParams(
                json=forced.schema, disable_any_whitespace=True
            )
        # JSON (response_format, json schemas, forced tool calls) applies to the answer after
        # the thinking, unless the template already closed the thinking block (thinking
        # switched off). A regex, choice or grammar covers the whole reply: it may spell the
        # thinking block out itself.
        splitter = self.reasoning_stream(model, prompt)
        structured = params.structured_outputs
        if (
            splitter is not None
            and structured is not None
            and (structured.json is not None or structured.json_object)
            and not splitter.in_answer
        ):
            structured.reasoning_end = splitter.parser.end
        if request.use_beam_search:
            stream = await start_beam_search(model, prompt, request, max_tokens, request_id)
        else:
            stream = await start_engine_request(
                model, prompt, params, request_id, priority=request.priority, metrics=self.metrics
            )
        return model, request_id, prompt, stream

    @staticmethod
    def prompt_text(model: ServedModel, prompt: PromptInput) -> str:
        """The prompt's text (its end decides whether the template opened a thinking block)."""
        if prompt.text is not None:
            return prompt.text
        return model.tokenizer.decode(prompt.token_ids[-32:])

    def reasoning_stream(self, model: ServedModel, prompt: PromptInput) -> ReasoningStream | None:
        if self.reasoning_parser is None:
            return None
        return ReasoningStream(self.reasoning_parser, self.prompt_text(model, prompt))

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
        forced = forced_tool_choice(request)
        auto = self._auto_parser(request, forced, model)
        states: dict[int, ChoiceState] = {}
        prompt_positions = None
        first: RequestOutput | None = None
        try:
            async for output in stream:
                first = first or output
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
            text, reasoning = state.full_text, None
            splitter = self.reasoning_stream(model, prompt)
            if splitter is not None:  # tools and JSON are read from the answer only
                reasoning, text = splitter.parser.split(text, self.prompt_text(model, prompt))
            message = ChatResponseMessage(role=ASSISTANT, content=echo + text)
            finish_reason = state.finish_reason
            tool_calls = forced.tool_calls(text) if forced is not None else None
            if tool_calls is not None:
                message = ChatResponseMessage(role=ASSISTANT, content="", tool_calls=tool_calls)
                finish_reason = _tool_finish_reason(forced, finish_reason)
            elif auto is not None:
                parsed = auto.parse(text)
                if parsed.tool_calls:
                    message = ChatResponseMessage(
                        role=ASSISTANT, content=parsed.content, tool_calls=parsed.tool_calls
                    )
                    finish_reason = "tool_calls" if finish_reason == "stop" else finish_reason
            message.reasoning_content = message.reasoning = reasoning
            if request.parallel_tool_calls is False:
                message.tool_calls = message.tool_calls[:1]
            choices.append(
                ChatCompletionResponseChoice(
                    index=index,
                    message=message,
                    logprobs=logprobs,
                    finish_reason=finish_reason,
                    stop_reason=state.stop_reason,
                )
            )
        prompt_tokens = prompt.num_tokens
        completion_tokens = sum(len(s.token_ids) for s in states.values())
        return ChatCompletionResponse(
            id=request_id,
            model=model.name,
            choices=choices,
            prompt_logprobs=prompt_logprobs_json(prompt_positions, token_text)
            if request.prompt_logprobs is not None
            else None,
            usage=self.usage(prompt_tokens, completion_tokens, [first] if first else []),
        )

    # ------------------------------------------------------------------ streaming
    @staticmethod
    def _tool_call_delta(
        forced: ForcedToolChoice,
        state: ChoiceState,
        completion: CompletionOutput,
        tool_call_ids: dict[int, str],
    ) -> ChatCompletionResponseStreamChoice | None:
        """A forced tool call as stream deltas: a named function's arguments stream as they
        are generated; "required" calls are sent whole once the JSON list is complete."""
        finish = completion.finish_reason
        if forced.mode == "named":
            if not completion.text and finish is None:
                return None
            call: dict[str, Any] = {"index": 0, "function": {"arguments": completion.text}}
            if state.index not in tool_call_ids:
                tool_call_ids[state.index] = new_tool_call_id()
                call.update(id=tool_call_ids[state.index], type="function")
                call["function"]["name"] = forced.function_name
            return ChatCompletionResponseStreamChoice(
                index=state.index,
                delta=DeltaMessage(tool_calls=[call]),
                finish_reason=_tool_finish_reason(forced, finish) if finish else None,
                stop_reason=completion.stop_reason,
            )
        if finish is None:
            return None
        calls = forced.tool_calls(state.full_text)
        if calls is None:  # cut short: what was generated, as content
            return ChatCompletionResponseStreamChoice(
                index=state.index,
                delta=DeltaMessage(content=state.full_text),
                finish_reason=finish,
                stop_reason=completion.stop_reason,
            )
        return ChatCompletionResponseStreamChoice(
            index=state.index,
            delta=DeltaMessage(tool_calls=[{"index": i, **c} for i, c in enumerate(calls)]),
            finish_reason=_tool_finish_reason(forced, finish),
            stop_reason=completion.stop_reason,
        )

    @staticmethod
    def _auto_tool_delta(
        parser: ToolParser,
        tool_states: dict[int, StreamingToolState],
        completion: CompletionOutput,
    ) -> ChatCompletionResponseStreamChoice | None:
        """Content streams until a tool call starts; then each call's name, and its
        arguments as they are generated."""
        tool_state = tool_states.setdefault(completion.index, StreamingToolState(parser))
        finish = completion.finish_reason
        if finish is None:
            content, calls = tool_state.feed(completion.text)
        else:
            content, calls = tool_state.finish(completion.text)
            if tool_state.called and finish == "stop":
                finish = "tool_calls"
        if not content and not calls and finish is None:
            return None
        return ChatCompletionResponseStreamChoice(
            index=completion.index,
            delta=DeltaMessage(content=content or None, tool_calls=calls or None),
            finish_reason=finish,
            stop_reason=completion.stop_reason,
        )

    async def stream(
        self, request: ChatCompletionRequest, raw_request: Request | None
    ) -> AsyncGenerator[str, None]:
        started = await self.start(request, raw_request)
        return self._events(request, *started)

    def _events(
        self,
        request: ChatCompletionRequest,
        model: ServedModel,
        request_id: str,
        prompt: PromptInput,
        stream: AsyncIterator[RequestOutput],
    ) -> AsyncGenerator[str, None]:
        chunks = self._chunks(request, model, request_id, prompt, stream)
        return self.sse_stream(chunks, stream.aclose)  # type: ignore[attr-defined]

    async def _chunks(
        self,
        request: ChatCompletionRequest,
        model: ServedModel,
        request_id: str,
        prompt: PromptInput,
        stream: AsyncIterator[RequestOutput],
    ) -> AsyncGenerator[str, None]:
        include_usage, continuous = self.stream_usage(request)
        token_text = TokenText(model.tokenizer, bool(request.return_tokens_as_token_ids))
        echo = self._echo_text(request)
        prompt_tokens = prompt.num_tokens
        states: dict[int, ChoiceState] = {}
        forced = forced_tool_choice(request)
        auto = self._auto_parser(request, forced, model)
        tool_states: dict[int, StreamingToolState] = {}
        tool_call_ids: dict[int, str] = {}
        splitters: dict[int, ReasoningStream | None] = {}
        firsts: list[RequestOutput] = []  # the first output (cached tokens)

        def usage() -> UsageInfo:
            generated = sum(len(s.token_ids) for s in states.values())
            return self.usage(prompt_tokens, generated, firsts)

        def chunk(choice: ChatCompletionResponseStreamChoice) -> str:
            calls = choice.delta.tool_calls
            if calls and request.parallel_tool_calls is False:  # vLLM: the first call only
                choice.delta.tool_calls = [c for c in calls if c.get("index") == 0] or None
            body = ChatCompletionStreamResponse(id=request_id, model=model.name, choices=[choice])
            if continuous:
                body.usage = usage()
            return sse_event(body)

        async for output in stream:
            if not firsts:
                firsts.append(output)
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
                splitter = splitters.setdefault(
                    completion.index, self.reasoning_stream(model, prompt)
                )
                if splitter is not None:
                    # The thinking goes out as its own deltas; what follows sees only the
                    # answer, as the non-streamed reply does.
                    thought, answer = splitter.feed(completion.text)
                    if completion.finish_reason is not None:
                        rest_thought, rest_answer = splitter.finish()
                        thought, answer = thought + rest_thought, answer + rest_answer
                    if thought:
                        yield chunk(
                            ChatCompletionResponseStreamChoice(
                                index=completion.index,
                                delta=DeltaMessage(reasoning_content=thought, reasoning=thought),
                            )
                        )
                    completion = dataclasses.replace(completion, text=answer)
                state.add(completion)
                if forced is not None:
                    event = self._tool_call_delta(forced, state, completion, tool_call_ids)
                    if event is not None:
                        yield chunk(event)
                    continue
                if auto is not None:
                    event = self._auto_tool_delta(auto, tool_states, completion)
                    if event is not None:
                        yield chunk(event)
                    continue
                # Plain content: one chunk per output that carries tokens, `{"content": ""}`
                # when the text is held back (a token ending inside a UTF-8 character, a
                # possible stop string). With a reasoning parser, an empty answer means the
                # parser kept the text (thinking, or a marker being read): nothing to send.
                if (
                    not completion.text
                    and completion.finish_reason is None
                    and (splitter is not None or not completion.token_ids)
                ):
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
