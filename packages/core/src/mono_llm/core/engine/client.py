"""How `AsyncLLM` reaches an `EngineCore`: in a thread of this process, or in its own process.

Both clients take tokenized, validated requests (`AddRequest`) and aborts, and hand every
output, request error and engine death to an `OutputSink` (the AsyncLLM), from a thread of
their own. `frontend` is the EngineCore face the API process tokenizes and validates with:
the engine itself in-process; in the multiprocess case an EngineCore without a model, built
from what the engine process reported once loaded (vocabulary, KV cache size), so limits are
checked exactly as the engine would check them.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from mono_llm.core.config import EngineConfig
from mono_llm.core.engine import messages as msg
from mono_llm.core.engine.core import EngineCore
from mono_llm.core.engine.stats_log import PeriodicStatsLog
from mono_llm.core.errors import (
    EngineDeadError,
    EngineError,
    EngineOverloadedError,
    InvalidRequestError,
)
from mono_llm.core.outputs import SchedulerStats

logger = logging.getLogger(__name__)

# Requests and aborts that may queue toward the engine process before new requests are
# refused with "overloaded" (503) instead of piling up without bound.
INPUT_QUEUE_BOUND = 4096


class OutputSink(Protocol):
    """Where a client's thread hands what the engine produced."""

    def deliver(self, request_id: str, item: Any) -> None:
        """An output, or an exception that ends the request."""

    def engine_died(self, exc: BaseException) -> None:
        """The engine cannot go on: fail every request in flight."""

    def engine_stopped(self) -> None:
        """A clean stop finished (unfinished requests got their "abort" output)."""


class EngineCoreClient:
    """The interface both clients implement."""

    frontend: EngineCore
    engine: EngineCore | None  # the engine object itself, when it runs in this process

    def add_request(self, request: msg.AddRequest) -> None:
        raise NotImplementedError

    def abort(self, request_ids: list[str]) -> None:
        raise NotImplementedError

    def num_waiting(self) -> int:
        """Requests waiting for their first step, counting those still on the way."""
        raise NotImplementedError

    def get_stats(self) -> SchedulerStats:
        raise NotImplementedError

    def is_alive(self) -> bool:
        raise NotImplementedError

    def shutdown(self, timeout: float) -> None:
        raise NotImplementedError


def make_engine_client(config: EngineConfig, sink: OutputSink) -> EngineCoreClient:
    """The multiprocess client when the config asks for it and the model generates text;
    pooling models (one prefill per request, no decode loop to protect), vision-language and
    encoder-decoder models (their requests carry tensors, which the messages do not encode
    yet) and tensor-parallel engines (their workers are processes of the engine's process)
    stay in-process."""
    if config.engine_process:
        from mono_llm.core.pooling.engine import PoolingEngine

        hf_config = config.model_config.hf_config
        if config.model_config.limit_mm_per_prompt:
            logger.info("vision-language model: its engine runs in the server process")
        elif hf_config.get("is_encoder_decoder"):
            logger.info("encoder-decoder model: its engine runs in the server process")
        elif config.parallel_config.tensor_parallel_size > 1:
            logger.info("tensor-parallel engine: its step loop runs in the server process")
        elif PoolingEngine.for_config(config) is not None:
            logger.info("pooling model: its engine runs in the server process")
        else:
            return MultiprocessClient(config, sink)
    return InProcessClient(EngineCore(config), sink)


# ---------------------------------------------------------------------- in-process


class InProcessClient(EngineCoreClient):
    """The step loop in a background thread of this process (torch releases the GIL inside
    its kernels; the thread holds it for scheduling and detokenization)."""

    def __init__(self, engine: EngineCore, sink: OutputSink) -> None:
        self.engine = engine
        self.frontend = engine
        self._sink = sink
        self._commands: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending_adds = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="mono-llm-engine", daemon=True)
        self._thread.start()

    def add_request(self, request: msg.AddRequest) -> None:
        with self._lock:
            self._pending_adds += 1
        self._commands.put(request)

    def abort(self, request_ids: list[str]) -> None:
        self._commands.put(("abort", request_ids))

    def num_waiting(self) -> int:
        return self.engine.num_waiting_requests + self._pending_adds

    def get_stats(self) -> SchedulerStats:
        stats = self.engine.get_stats()
        stats.num_waiting_reqs += self._pending_adds
        return stats

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def shutdown(self, timeout: float) -> None:
        self._commands.put(("stop", None))
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
            self.engine.shutdown()  # tensor-parallel workers, when there are any

    def _handle(self, command: Any) -> bool:
        """Apply one command; False when the loop must stop."""
        engine, sink = self.engine, self._sink
        if isinstance(command, msg.AddRequest):
            with self._lock:
                self._pending_adds -= 1
            try:
                command.add_to(engine)
            except Exception as exc:  # a request error, reported to its own consumer only
                sink.deliver(command.request_id, exc)
            return True
        kind, payload = command
        if kind == "abort":
            for out in engine.abort_request(payload):
                sink.deliver(out.request_id, out)
            return True
        return kind != "stop"

    def _loop(self) -> None:
        engine, sink = self.engine, self._sink
        stats_log = PeriodicStatsLog(logger)
        try:
            device = getattr(engine.model_runner, "device", None)
            if device is not None and getattr(device, "type", None) == "cuda":
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
                        sink.deliver(out.request_id, out)
                    for request_id, exc in engine.pop_failures().items():
                        sink.deliver(
                            request_id,
                            EngineError(f"The request failed inside the engine: {exc!r}"),
                        )
                stats_log.maybe_log(engine)
        except BaseException as exc:  # the engine is unusable: fail every stream loudly
            logger.exception("engine loop died")
            sink.engine_died(exc)
            return
        # Clean shutdown: unfinished requests end with "abort".
        for out in engine.abort_request(list(engine.requests)):
            sink.deliver(out.request_id, out)
        sink.engine_stopped()


# ---------------------------------------------------------------------- multiprocess


@dataclass(slots=True)
class _RemoteRunner:
    """What EngineCore reads from a model runner, as the engine process reported it."""

    vocab_size: int
    num_blocks: int
    block_size: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


@dataclass(slots=True)
class _Prompt:
    text: str | None
    token_ids: list[int]


class MultiprocessClient(EngineCoreClient):
    """The step loop in a spawned child process (process.py), over two ZeroMQ IPC sockets:
    requests and aborts one way, one output message per engine step the other way. A reader
    thread here decodes each message and hands its outputs to the sink."""

    engine = None

    def __init__(self, config: EngineConfig, sink: OutputSink, ready_timeout: float = 1800.0):
        import zmq

        from mono_llm.core.engine.process import run_engine_core

        self._sink = sink
        self._lock = threading.Lock()  # zmq sockets are not thread-safe
        self._prompts: dict[str, _Prompt] = {}
        self._adds_sent = 0
        self._adds_seen = 0
        self._stats = SchedulerStats()
        self._stopping = False
        self._dead = False
        self._ipc_dir = tempfile.mkdtemp(prefix="mono-llm-engine-")
        input_address = f"ipc://{self._ipc_dir}/input"
        output_address = f"ipc://{self._ipc_dir}/output"
        self._context = zmq.Context(io_threads=1)
        self._input = self._context.socket(zmq.PUSH)
        self._input.setsockopt(zmq.SNDHWM, INPUT_QUEUE_BOUND)
        self._input.bind(input_address)
        self._output = self._context.socket(zmq.PULL)
        self._output.bind(output_address)
        spawn = multiprocessing.get_context("spawn")
        self.process = spawn.Process(
            target=run_engine_core,
            args=(config, input_address, output_address, os.getpid()),
            name="mono-llm-engine-core",
            daemon=True,  # terminated by multiprocessing if this process exits without shutdown
        )
        started = time.monotonic()
        self.process.start()
        try:
            ready = self._wait_ready(ready_timeout)
        except BaseException:
            self._reap(timeout=5.0)
            self._close()
            raise
        config.cache_config.num_blocks = ready.num_blocks
        runner = _RemoteRunner(ready.vocab_size, ready.num_blocks, ready.block_size)
        # Tokenizer, limits and grammar compilation in this process, no model.
        self.frontend = EngineCore(config, model_runner=runner)
        logger.info(
            "engine process %d ready in %.1f s", self.process.pid, time.monotonic() - started
        )
        self._reader = threading.Thread(
            target=self._read_loop, name="mono-llm-engine-outputs", daemon=True
        )
        self._reader.start()

    # ------------------------------------------------------------------ start-up
    def _wait_ready(self, timeout: float) -> msg.EngineReady:
        import zmq

        poller = zmq.Poller()
        poller.register(self._output, zmq.POLLIN)
        poller.register(self.process.sentinel, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = dict(poller.poll(1000))
            if self._output in events:
                kind, body = self._output.recv_multipart()
                if kind == msg.READY:
                    return msg.decode(body, msg.EngineReady)
                if kind == msg.FATAL:
                    raise EngineError(
                        "The engine process failed to start:\n" + msg.decode(body, str)
                    )
            elif self.process.sentinel in events:
                raise EngineError(
                    f"The engine process exited during start-up (code {self.process.exitcode})."
                )
        raise EngineError(f"The engine process was not ready within {timeout:.0f} s.")

    # ------------------------------------------------------------------ requests
    def add_request(self, request: msg.AddRequest) -> None:
        import zmq

        if request.encoder_features is not None:  # encoder-decoder models stay in-process
            raise InvalidRequestError("This engine takes no encoder_features.", param="prompt")
        if getattr(request.prompt_token_ids, "mm_items", None):  # never sent without them
            raise InvalidRequestError("This engine takes no media inputs.", param="prompt")
        try:
            body = msg.encode(request)
        except (OverflowError, TypeError, ValueError) as exc:  # msgpack ints are 64-bit
            raise InvalidRequestError(
                f"The request holds a value the engine cannot take: {exc}."
            ) from None
        with self._lock:
            if self._dead:
                raise EngineDeadError("The engine process has stopped.")
            try:
                self._input.send_multipart([msg.ADD, body], flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                raise EngineOverloadedError(
                    "The engine's request queue is full; retry later."
                ) from None
            self._adds_sent += 1
            self._prompts[request.request_id] = _Prompt(
                request.prompt_text, request.prompt_token_ids
            )

    def abort(self, request_ids: list[str]) -> None:
        self._send(msg.ABORT, msg.encode(request_ids))

    def _send(self, kind: bytes, body: bytes) -> None:
        import zmq

        with self._lock:
            if self._dead:
                return
            try:
                self._input.send_multipart([kind, body], flags=zmq.NOBLOCK)
            except zmq.Again:  # a full queue: the engine is stuck or gone; the reader sees it
                logger.warning("engine request queue full; %r dropped", kind)

    def num_waiting(self) -> int:
        return self._stats.num_waiting_reqs + self._adds_sent - self._adds_seen

    def get_stats(self) -> SchedulerStats:
        stats = self._stats
        return SchedulerStats(
            num_running_reqs=stats.num_running_reqs,
            num_waiting_reqs=self.num_waiting(),
            kv_cache_usage=stats.kv_cache_usage,
            num_preemptions=stats.num_preemptions,
            prefix_cache_queries=stats.prefix_cache_queries,
            prefix_cache_hits=stats.prefix_cache_hits,
            num_prompt_tokens=stats.num_prompt_tokens,
            num_generation_tokens=stats.num_generation_tokens,
        )

    def is_alive(self) -> bool:
        return not self._dead and self.process.is_alive()

    # ------------------------------------------------------------------ outputs
    def _read_loop(self) -> None:
        import zmq

        poller = zmq.Poller()
        poller.register(self._output, zmq.POLLIN)
        poller.register(self.process.sentinel, zmq.POLLIN)
        try:
            while True:
                events = dict(poller.poll(1000))
                if self._output in events:
                    while True:
                        try:
                            kind, body = self._output.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        if not self._on_message(kind.bytes, body.buffer):
                            return
                elif self.process.sentinel in events:
                    self.process.join(1.0)  # the exit code is known once it is reaped
                    self._died(
                        EngineDeadError(
                            f"The engine process exited unexpectedly (code "
                            f"{self.process.exitcode})."
                        )
                    )
                    return
        except BaseException as exc:  # a bug here must not leave streams waiting forever
            logger.exception("engine output reader died")
            self._died(exc)

    def _on_message(self, kind: bytes, body: Any) -> bool:
        """Handle one engine message; False once the engine is gone."""
        sink = self._sink
        if kind == msg.OUTPUTS:
            batch = msg.decode(body, msg.OutputBatch)
            prompts = self._prompts
            for out in batch.outputs:
                prompt = prompts.get(out.request_id)
                if prompt is not None:
                    out.prompt, out.prompt_token_ids = prompt.text, prompt.token_ids
                    if out.finished:
                        del prompts[out.request_id]
                sink.deliver(out.request_id, out)
            for error in batch.errors:
                prompts.pop(error.request_id, None)
                sink.deliver(error.request_id, msg.message_to_error(error))
            if batch.stats is not None:
                self._stats = batch.stats
            self._adds_seen = batch.adds_seen
            return True
        if kind == msg.STOPPED:
            with self._lock:
                self._dead = True
            sink.engine_stopped()
            return False
        if kind == msg.FATAL:
            self._died(EngineError(f"The engine process failed: {msg.decode(body, str)}"))
            return False
        raise ValueError(f"unknown engine message {bytes(kind)!r}")

    def _died(self, exc: BaseException) -> None:
        with self._lock:
            self._dead = True
        if not self._stopping:
            logger.error("engine process died: %s", exc)
        self._sink.engine_died(exc)
        self._reap(timeout=5.0)

    # ------------------------------------------------------------------ shutdown
    def shutdown(self, timeout: float) -> None:
        """Ask the engine to stop (it aborts what runs), wait for it, reap the process."""
        if self._stopping:
            return
        self._stopping = True
        self._send(msg.STOP, b"")
        if threading.current_thread() is not self._reader:
            self._reader.join(timeout)
        self._reap(timeout=min(timeout, 10.0))
        if threading.current_thread() is not self._reader:
            self._close()

    def _reap(self, timeout: float) -> None:
        """Wait for the engine process to exit; terminate it, then kill it, if it does not."""
        process = self.process
        process.join(timeout)
        if process.is_alive():
            logger.warning("engine process %d did not exit; terminating it", process.pid)
            process.terminate()
            process.join(5.0)
        if process.is_alive():
            process.kill()
            process.join(5.0)

    def _close(self) -> None:
        with self._lock:
            self._dead = True
            self._input.close(linger=0)
            self._output.close(linger=0)
            self._context.term()
        shutil.rmtree(self._ipc_dir, ignore_errors=True)
