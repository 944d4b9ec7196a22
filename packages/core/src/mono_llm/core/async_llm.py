"""`AsyncLLM`: the asyncio face of the engine, and the server's only entry into it.

The API side (this object) tokenizes and validates prompts, then hands each request to an
engine-core client (engine/client.py): by default under the server the step loop runs in its
own process and talks to this one over ZeroMQ (`engine_process`); otherwise it runs in a
background thread here. Outputs come back through one asyncio queue per request, filled with
`call_soon_threadsafe` on the consumer's own loop by the client's thread.

A consumer that stops iterating (client disconnected, task cancelled, `aclose()`) aborts its
request, which frees its KV blocks at the next step boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass
from typing import Any

from mono_llm.core.config import AsyncEngineArgs, EngineArgs, EngineConfig, ModelConfig
from mono_llm.core.engine.client import EngineCoreClient, make_engine_client
from mono_llm.core.engine.core import EngineCore
from mono_llm.core.engine.messages import AddRequest
from mono_llm.core.engine.output_processor import merge_delta_outputs
from mono_llm.core.engine.structured_outputs import (
    GRAMMAR_COMPILE_TIMEOUT_S,
    GrammarCompileTimeoutError,
)
from mono_llm.core.errors import (
    EngineDeadError,
    EngineError,
    EngineOverloadedError,
    InvalidRequestError,
)
from mono_llm.core.inputs import PromptType, encoder_features_of
from mono_llm.core.outputs import PoolingRequestOutput, RequestOutput, SchedulerStats
from mono_llm.core.pooling_params import PoolingParams
from mono_llm.core.sampling_params import RequestOutputKind, SamplingParams

logger = logging.getLogger(__name__)

# Text prompts longer than this are tokenized in a worker thread (~1 ms per 4k characters).
_TOKENIZE_IN_THREAD_CHARS = 4096


@dataclass(slots=True)
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Any]

    def put(self, item: Any) -> None:
        # A closed consumer loop raises RuntimeError: nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


def _merger(params: Any) -> Any:
    """How to combine queued outputs of one request: DELTA concatenates, CUMULATIVE keeps
    the newest, FINAL_ONLY (and pooling) never queues more than one."""
    kind = getattr(params, "output_kind", None)
    if kind == RequestOutputKind.DELTA:
        return merge_delta_outputs
    if kind == RequestOutputKind.CUMULATIVE:
        return lambda older, newer: newer
    return None


class AsyncLLM:
    """An engine whose step loop runs apart from the caller's event loop; `generate` is async."""

    def __init__(self, config: EngineConfig, *, engine: EngineCore | None = None) -> None:
        self.engine_config = config
        self.model_config: ModelConfig = config.model_config
        self._streams: dict[str, _Stream] = {}
        self._streams_lock = threading.Lock()
        self._stopping = False
        self._error: BaseException | None = None
        if engine is not None:
            from mono_llm.core.engine.client import InProcessClient

            self._client: EngineCoreClient = InProcessClient(engine, self)
        else:
            self._client = make_engine_client(config, self)
        # Tokenizing and validating happen here, in the API process, on the client's frontend
        # (the engine itself in-process; a model-less copy of its checks otherwise).
        self.processor: EngineCore = self._client.frontend
        self.tokenizer = self.processor.tokenizer

    @classmethod
    def from_engine_args(cls, args: EngineArgs | AsyncEngineArgs) -> AsyncLLM:
        """Load the model and start the step loop."""
        return cls(args.create_engine_config())

    @property
    def engine(self) -> EngineCore:
        """The EngineCore itself; only when it runs in this process (engine_process off)."""
        if self._client.engine is None:
            raise AttributeError("the engine runs in its own process (engine_process=True)")
        return self._client.engine

    @property
    def engine_pid(self) -> int | None:
        """The engine process's pid, or None when the engine runs in this process."""
        process = getattr(self._client, "process", None)
        return None if process is None else process.pid

    # ------------------------------------------------------------------ public API
    def get_default_sampling_params(self) -> dict[str, Any]:
        return self.processor.get_default_sampling_params()

    @property
    def is_running(self) -> bool:
        return self._client.is_alive() and not self._stopping and self._error is None

    @property
    def errored(self) -> bool:
        return self._error is not None

    @property
    def dead_error(self) -> EngineDeadError:
        if self._error is not None:
            return EngineDeadError(f"The engine loop has died: {self._error!r}")
        return EngineDeadError("The engine has been shut down.")

    async def check_health(self) -> None:
        if not self.is_running:
            raise self.dead_error

    def get_stats(self) -> SchedulerStats:
        return self._client.get_stats()

    async def generate(
        self,
        prompt: PromptType,
        sampling_params: SamplingParams,
        request_id: str,
        *,
        priority: int = 0,
    ) -> AsyncGenerator[RequestOutput, None]:
        """Stream the request's outputs; the last one has finished=True.

        Validation errors surface from the first `__anext__`, before any output.
        """
        if not self.is_running:
            raise self.dead_error
        processor = self.processor
        if isinstance(prompt, str) and len(prompt) > _TOKENIZE_IN_THREAD_CHARS:
            # Tokenizing a long prompt takes milliseconds: keep the event loop free meanwhile.
            text, token_ids = await asyncio.to_thread(
                processor.process_prompt, prompt, sampling_params
            )
        else:
            text, token_ids = processor.process_prompt(prompt, sampling_params)
        processor.validate_sampling_params(sampling_params)
        features = encoder_features_of(prompt)
        processor.check_encoder_features(features)
        structured = sampling_params.structured_outputs
        if structured is not None and not structured.is_empty and processor.grammar_factory:
            # Compiling a grammar can take seconds (a 300-deep JSON schema: ~5 s) and xgrammar
            # releases the GIL meanwhile: compile here, off the step loop, so an invalid
            # schema fails before a stream starts and (in-process) the loop's own compile is
            # a cache hit. Waiting is bounded: past the limit the request is refused, and a
            # compile whose requests are all gone is abandoned to its thread.
            try:
                await asyncio.wait_for(
                    asyncio.to_thread(
                        processor.grammar_factory,
                        structured,
                        processor.tokenizer,
                        processor.vocab_size,
                    ),
                    GRAMMAR_COMPILE_TIMEOUT_S,
                )
            except asyncio.TimeoutError:
                raise GrammarCompileTimeoutError() from None
        # aclosing: a consumer that stops early must abort the request now, not at GC time.
        submitted = self._submit(request_id, sampling_params, text, token_ids, priority, features)
        async with contextlib.aclosing(submitted) as outputs:
            async for out in outputs:
                yield out

    async def encode(
        self,
        prompt: PromptType,
        pooling_params: PoolingParams,
        request_id: str,
        *,
        priority: int = 0,
    ) -> AsyncGenerator[PoolingRequestOutput, None]:
        """Run a pooling request (embed / classify / score / encode); yields one finished
        PoolingRequestOutput. Validation errors surface from the first `__anext__`."""
        if not self.is_running:
            raise self.dead_error
        text, token_ids, params = self.processor.process_pooling_prompt(prompt, pooling_params)
        submitted = self._submit(request_id, params, text, token_ids, priority)
        async with contextlib.aclosing(submitted) as outputs:
            async for out in outputs:
                yield out

    async def _submit(
        self,
        request_id: str,
        params: SamplingParams | PoolingParams,
        text: str | None,
        token_ids: list[int],
        priority: int,
        encoder_features: Any = None,
    ) -> AsyncGenerator[Any, None]:
        """Hand a validated request to the engine and stream its outputs back."""
        client = self._client
        bound = self.engine_config.scheduler_config.max_waiting_requests
        if bound is not None and client.num_waiting() >= bound:
            raise EngineOverloadedError(f"The engine has {bound} requests waiting; retry later.")
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        with self._streams_lock:
            # Checked under the lock the dying loop takes to fail every stream: a request
            # registered after that would wait forever.
            if self._error is not None or self._stopping:
                raise self.dead_error
            if request_id in self._streams:
                raise InvalidRequestError(
                    f"Request id {request_id!r} is already running.", param="request_id"
                )
            self._streams[request_id] = stream
        request = AddRequest(
            request_id,
            token_ids,
            text,
            sampling=params if isinstance(params, SamplingParams) else None,
            pooling=params if isinstance(params, PoolingParams) else None,
            # Priorities only order requests; beyond 64 bits they cannot cross to an engine
            # process (msgpack), and clamping keeps their order with every sane value.
            priority=min(max(priority, -(2**63)), 2**63 - 1),
            arrival_time=time.time(),
            encoder_features=encoder_features,
        )
        try:
            client.add_request(request)
        except BaseException:
            with self._streams_lock:
                self._streams.pop(request_id, None)
            raise
        finished = False
        merge = _merger(params)
        pending_error: BaseException | None = None
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    finished = True  # the engine has dropped it already
                    raise item
                # A consumer that fell behind gets what piled up as one output.
                while merge is not None and not item.finished and not stream.queue.empty():
                    newer = stream.queue.get_nowait()
                    if isinstance(newer, BaseException):
                        pending_error = newer
                        break
                    item = merge(item, newer)
                finished = item.finished
                yield item
                if finished:
                    return
                if pending_error is not None:
                    finished = True
                    raise pending_error
        finally:
            with self._streams_lock:
                self._streams.pop(request_id, None)
            if not finished and self._error is None:
                client.abort([request_id])

    async def abort(self, request_id: str | Iterable[str]) -> None:
        """Abort requests; their streams end with an output whose finish_reason is "abort"."""
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        self._client.abort(ids)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the engine; unfinished requests end with "abort"."""
        if self._stopping:
            return
        self._stopping = True
        self._client.shutdown(timeout)

    # ------------------------------------------------------------------ OutputSink (client thread)
    def deliver(self, request_id: str, item: Any) -> None:
        with self._streams_lock:
            stream = self._streams.get(request_id)
        if stream is not None:
            stream.put(item)

    def engine_died(self, exc: BaseException) -> None:
        """Requests in flight end with a 500 (the server failed them); new ones get the
        dead-engine 503 from `generate`, and /health turns 503."""
        failed = EngineError(
            f"The engine failed while this request was running ({exc!r}); it serves "
            "no more requests."
        )
        with self._streams_lock:
            self._error = exc
            streams = list(self._streams.values())
        for stream in streams:
            stream.put(failed)

    def engine_stopped(self) -> None:
        """After a clean stop: a stream that got no final output is told the engine is gone."""
        with self._streams_lock:
            self._stopping = True
            streams = list(self._streams.items())
        for _, stream in streams:
            stream.put(self.dead_error)
