"""`AsyncLLM`: the asyncio face of the engine, and the server's only entry into it.

The busy step loop runs in a background thread, so the event loop never waits on a model
step: torch releases the GIL inside its kernels, and the thread only holds it briefly for
scheduling and detokenization. Requests and aborts reach the thread through a thread-safe
command queue; outputs come back through one asyncio queue per request, filled with
`call_soon_threadsafe` on the consumer's own loop.

A consumer that stops iterating (client disconnected, task cancelled, `aclose()`) aborts its
request, which frees its KV blocks at the next step boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass
from typing import Any

from mono_llm.core.config import AsyncEngineArgs, EngineArgs, EngineConfig, ModelConfig
from mono_llm.core.engine.core import EngineCore
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

_STATS_LOG_INTERVAL_S = 10.0
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


@dataclass(slots=True)
class _AddCommand:
    request_id: str
    params: SamplingParams | PoolingParams
    prompt_text: str | None
    prompt_token_ids: list[int]
    priority: int
    arrival_time: float
    encoder_features: Any = None  # encoder–decoder models: the encoder input


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
    """An engine whose step loop runs in a background thread; `generate` is async."""

    def __init__(self, config: EngineConfig, *, engine: EngineCore | None = None) -> None:
        self.engine = engine if engine is not None else EngineCore(config)
        self.engine_config = config
        self.model_config: ModelConfig = config.model_config
        self.tokenizer = self.engine.tokenizer
        self._commands: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}
        self._streams_lock = threading.Lock()
        self._pending_adds = 0  # queued add commands not yet seen by the loop
        self._stopping = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="mono-llm-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_engine_args(cls, args: EngineArgs | AsyncEngineArgs) -> AsyncLLM:
        """Load the model and start the step loop."""
        return cls(args.create_engine_config())

    # ------------------------------------------------------------------ public API
    def get_default_sampling_params(self) -> dict[str, Any]:
        return self.engine.get_default_sampling_params()

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive() and not self._stopping and self._error is None

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
        stats = self.engine.get_stats()
        stats.num_waiting_reqs += self._pending_adds
        return stats

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
        engine = self.engine
        if isinstance(prompt, str) and len(prompt) > _TOKENIZE_IN_THREAD_CHARS:
            # Tokenizing a long prompt takes milliseconds: keep the event loop free meanwhile.
            text, token_ids = await asyncio.to_thread(
                engine.process_prompt, prompt, sampling_params
            )
        else:
            text, token_ids = engine.process_prompt(prompt, sampling_params)
        engine.validate_sampling_params(sampling_params)
        features = encoder_features_of(prompt)
        engine.check_encoder_features(features)
        structured = sampling_params.structured_outputs
        if structured is not None and not structured.is_empty and engine.grammar_factory:
            # Compiling a grammar can take seconds (a 300-deep JSON schema: ~5 s) and xgrammar
            # releases the GIL meanwhile: compile here, off the step loop, so the loop's own
            # compile is a cache hit and every other request keeps streaming. An invalid
            # schema fails here, before a stream starts.
            # Waiting is bounded: past the limit the request is refused, and a compile whose
            # requests are all gone (timed out, disconnected) is abandoned to its thread.
            try:
                await asyncio.wait_for(
                    asyncio.to_thread(
                        engine.grammar_factory, structured, engine.tokenizer, engine.vocab_size
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
        text, token_ids, params = self.engine.process_pooling_prompt(prompt, pooling_params)
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
        """Queue a validated request for the loop thread and stream its outputs back."""
        engine = self.engine
        bound = self.engine_config.scheduler_config.max_waiting_requests
        if bound is not None and engine._num_waiting_requests + self._pending_adds >= bound:
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
            self._pending_adds += 1
        self._commands.put(
            _AddCommand(
                request_id, params, text, token_ids, priority, time.time(), encoder_features
            )
        )
        finished = False
        merge = _merger(params)
        pending_error: BaseException | None = None
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
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
                    raise pending_error
        finally:
            with self._streams_lock:
                self._streams.pop(request_id, None)
            if not finished:
                self._commands.put(("abort", [request_id]))

    async def abort(self, request_id: str | Iterable[str]) -> None:
        """Abort requests; their streams end with an output whose finish_reason is "abort"."""
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        self._commands.put(("abort", ids))

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the loop; unfinished requests end with "abort"."""
        if self._stopping:
            return
        self._stopping = True
        self._commands.put(("stop", None))
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
            self.engine.shutdown()  # tensor-parallel workers, when there are any

    # ------------------------------------------------------------------ the loop thread
    def _deliver(self, request_id: str, item: Any) -> None:
        with self._streams_lock:
            stream = self._streams.get(request_id)
        if stream is not None:
            stream.put(item)

    def _handle(self, command: Any) -> bool:
        """Apply one command; False when the loop must stop."""
        engine = self.engine
        if isinstance(command, _AddCommand):
            with self._streams_lock:
                self._pending_adds -= 1
                wanted = command.request_id in self._streams
            if not wanted:  # the consumer left before the request was even queued
                return True
            try:
                engine.add_request(
                    command.request_id,
                    command.prompt_token_ids,
                    command.params,
                    arrival_time=command.arrival_time,
                    priority=command.priority,
                    prompt_text=command.prompt_text,
                    prompt_token_ids=command.prompt_token_ids,
                    encoder_features=command.encoder_features,
                )
            except Exception as exc:  # a request error, reported to its own consumer only
                self._deliver(command.request_id, exc)
            return True
        kind, payload = command
        if kind == "abort":
            for out in engine.abort_request(payload):
                self._deliver(out.request_id, out)
            return True
        return kind != "stop"

    def _loop(self) -> None:
        engine = self.engine
        last_log = time.monotonic()
        try:
            device = getattr(engine.model_runner, "device", None)
            if device is not None and getattr(device, "type", None) == "cuda":
                import torch

                # A new thread starts on cuda:0; kernels and graph replays must run on the
                # device the model and its graphs live on.
                torch.cuda.set_device(device)
            while True:
                block = not engine.has_unfinished_requests()
                try:
                    command = (
                        self._commands.get(timeout=1.0) if block else self._commands.get_nowait()
                    )
                except queue.Empty:
                    command = None
                running = True
                while command is not None and running:
                    running = self._handle(command)
                    try:
                        command = self._commands.get_nowait() if running else None
                    except queue.Empty:
                        command = None
                if not running:
                    break
                if engine.has_unfinished_requests():
                    for out in engine.step():
                        self._deliver(out.request_id, out)
                    for request_id, exc in engine.pop_failures().items():
                        self._deliver(
                            request_id,
                            EngineError(f"The request failed inside the engine: {exc!r}"),
                        )
                if (
                    not self.engine_config.disable_log_stats
                    and time.monotonic() - last_log > _STATS_LOG_INTERVAL_S
                ):
                    last_log = time.monotonic()
                    if engine.has_unfinished_requests():
                        stats = engine.get_stats()
                        logger.info(
                            "running %d, waiting %d, KV cache %.1f%%, prefix hits %d/%d tokens",
                            stats.num_running_reqs,
                            stats.num_waiting_reqs,
                            100 * stats.kv_cache_usage,
                            stats.prefix_cache_hits,
                            stats.prefix_cache_queries,
                        )
        except BaseException as exc:  # the engine is unusable: fail every stream loudly
            logger.exception("engine loop died")
            # Requests in flight end with a 500 (the server failed them); new ones get the
            # dead-engine 503 from `generate`, and /health turns 503.
            failed = EngineError(
                f"The engine failed while this request was running ({exc!r}); it serves "
                "no more requests."
            )
            with self._streams_lock:
                self._error = exc
                streams = list(self._streams.values())
            for stream in streams:
                stream.put(failed)
            return
        # Clean shutdown: unfinished requests end with "abort".
        for out in engine.abort_request(list(engine.requests)):
            self._deliver(out.request_id, out)
        with self._streams_lock:
            leftover = [rid for rid in self._streams if rid not in engine.requests]
        for request_id in leftover:
            self._deliver(request_id, self.dead_error)
