"""The engine-core process: `EngineCore`'s busy step loop alone in a child process.

The API process (HTTP, JSON, tokenizing, streaming) and the step loop used to share one
interpreter, so every request parsed or chunk sent delayed a model step. Here the loop owns
its process: it takes requests and aborts from one ZeroMQ socket between steps, and sends each
step's outputs as one message on another (messages.py). It never waits on the API process,
except when that process stops reading altogether: the output socket's bounded queue then
pauses the engine rather than growing without limit.

The process ends when told to stop (unfinished requests are sent their "abort" output
first), when its loop fails (a FATAL message, exit code 1), or when the API process dies (it
checks its parent between steps and every second when idle, so it never outlives it).
"""

from __future__ import annotations

import logging
import os
import signal
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from mono_llm.core.config import EngineConfig
from mono_llm.core.engine import messages as msg
from mono_llm.core.engine.stats_log import PeriodicStatsLog
from mono_llm.core.gc_heap import freeze_startup_heap
from mono_llm.core.outputs import CompletionOutput, RequestOutput

logger = logging.getLogger(__name__)

# Idle: how long to wait for a request before checking that the parent is still there.
_IDLE_POLL_MS = 1000
# Idle with grammars compiling: how often to look whether one is done.
_COMPILE_POLL_MS = 5
# Busy: check the parent every this many iterations (os.getppid() is a cheap syscall).
_PARENT_CHECK_EVERY = 64
# Output messages that may queue toward a slow API process before the engine waits for it.
OUTPUT_QUEUE_BOUND = 1024


def run_engine_core(
    config: EngineConfig, input_address: str, output_address: str, parent_pid: int
) -> None:
    """The child's entry point (multiprocessing, spawn): load the model, say READY, loop."""
    import zmq

    # Ctrl-C reaches the whole process group; the API process decides when the engine stops
    # (after draining), so the engine ignores it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(asctime)s %(name)s [engine]: %(message)s"
    )
    context = zmq.Context(io_threads=1)
    inputs = context.socket(zmq.PULL)
    inputs.connect(input_address)
    outputs = context.socket(zmq.PUSH)
    outputs.setsockopt(zmq.SNDHWM, OUTPUT_QUEUE_BOUND)
    outputs.connect(output_address)
    code = 0
    try:
        try:
            from mono_llm.core.engine.core import EngineCore

            engine = EngineCore(config)
        except BaseException:
            outputs.send_multipart([msg.FATAL, msg.encode(traceback.format_exc())])
            code = 1
            return
        runner = engine.model_runner
        ready = msg.EngineReady(engine.vocab_size, runner.num_blocks, runner.block_size)
        freeze_startup_heap()
        outputs.send_multipart([msg.READY, msg.encode(ready)])
        try:
            EngineCoreLoop(engine, inputs, outputs, parent_pid).run()
        except BaseException as exc:
            logger.exception("engine loop died")
            outputs.send_multipart([msg.FATAL, msg.encode(repr(exc))])
            code = 1
    finally:
        # Give queued messages (the last outputs, STOPPED or FATAL) a moment to leave.
        inputs.close(linger=0)
        outputs.close(linger=5000)
        context.term()
        if code:
            os._exit(code)


class EngineCoreLoop:
    """Commands in between steps, one output message per productive iteration."""

    def __init__(self, engine: Any, inputs: Any, outputs: Any, parent_pid: int) -> None:
        self.engine = engine
        self.inputs = inputs
        self.outputs = outputs
        self.parent_pid = parent_pid
        self.adds_seen = 0
        self.stopping = False
        self._pending: list[Any] = []
        self._errors: list[msg.RequestError] = []
        self._stats_log = PeriodicStatsLog(logger)
        # Requests whose grammar compiles in a worker thread (seconds for a deep JSON schema;
        # xgrammar releases the GIL): admitted once compiled, so no step waits for it.
        self._compiling: dict[str, tuple[Future[Any], msg.AddRequest]] = {}
        self._grammar_pool: ThreadPoolExecutor | None = None

    def run(self) -> None:
        import zmq

        engine = self.engine
        iteration = 0
        while True:
            iteration += 1
            if not engine.has_unfinished_requests():
                wait_ms = _COMPILE_POLL_MS if self._compiling else _IDLE_POLL_MS
                if not self.inputs.poll(wait_ms) and not self._parent_alive():
                    logger.warning("the API process is gone; the engine process exits")
                    return
            elif iteration % _PARENT_CHECK_EVERY == 0 and not self._parent_alive():
                logger.warning("the API process is gone; the engine process exits")
                return
            took = False
            while True:
                try:
                    kind, body = self.inputs.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                took = True
                self._handle(kind, body)
                if self.stopping:
                    break
            if self._compiling and self._admit_compiled():
                took = True
            if self.stopping:
                self._abort_compiling(list(self._compiling))
                self._pending.extend(engine.abort_request(list(engine.requests)))
                self._flush()
                self.engine.shutdown()
                self.outputs.send_multipart([msg.STOPPED, b""])
                return
            if engine.has_unfinished_requests():
                self._pending.extend(engine.step())
                for request_id, exc in engine.pop_failures().items():
                    self._errors.append(msg.error_to_message(request_id, exc))
                took = True
            if took:
                self._flush()
            self._stats_log.maybe_log(self.engine)

    def _parent_alive(self) -> bool:
        return os.getppid() == self.parent_pid

    def _handle(self, kind: bytes, body: bytes) -> None:
        engine = self.engine
        if kind == msg.ADD:
            self.adds_seen += 1
            request = msg.decode(body, msg.AddRequest)
            structured = request.sampling.structured_outputs if request.sampling else None
            if structured is not None and not structured.is_empty and engine.grammar_factory:
                if self._grammar_pool is None:
                    self._grammar_pool = ThreadPoolExecutor(2, "mono-llm-grammar")
                future = self._grammar_pool.submit(
                    engine.grammar_factory, structured, engine.tokenizer, engine.vocab_size
                )
                self._compiling[request.request_id] = (future, request)
                return
            self._add(request)
        elif kind == msg.ABORT:
            ids = msg.decode(body, list[str])
            self._abort_compiling([i for i in ids if i in self._compiling])
            self._pending.extend(engine.abort_request(ids))
        elif kind == msg.STOP:
            self.stopping = True
        else:
            raise ValueError(f"unknown engine command {kind!r}")

    def _add(self, request: msg.AddRequest) -> None:
        try:
            request.add_to(self.engine)
        except Exception as exc:  # this request's error, answered to it alone
            self._errors.append(msg.error_to_message(request.request_id, exc))

    def _admit_compiled(self) -> bool:
        """Admit the requests whose grammar is compiled (the engine's compile is then a cache
        hit); True if any was admitted or failed."""
        done = [rid for rid, (future, _) in self._compiling.items() if future.done()]
        for rid in done:
            future, request = self._compiling.pop(rid)
            error = future.exception()
            if error is not None:
                self._errors.append(msg.error_to_message(rid, error))
            else:
                self._add(request)
        return bool(done)

    def _abort_compiling(self, request_ids: list[str]) -> None:
        """End requests still waiting for their grammar with "abort" outputs."""
        for rid in request_ids:
            future, request = self._compiling.pop(rid)
            future.cancel()
            count = request.params.n if request.sampling is not None else 1
            self._pending.append(
                RequestOutput(
                    rid,
                    None,
                    [],
                    None,
                    [CompletionOutput(i, "", [], finish_reason="abort") for i in range(count)],
                    True,
                )
            )

    def _flush(self) -> None:
        """Send what this iteration produced (and the load figures) as one message."""
        outputs = self._pending
        for out in outputs:  # the API process has the prompt; do not send it every step
            out.prompt = None
            out.prompt_token_ids = []
        batch = msg.OutputBatch(outputs, self._errors, self.engine.get_stats(), self.adds_seen)
        self._pending, self._errors = [], []
        self.outputs.send_multipart([msg.OUTPUTS, msg.encode(batch)], copy=False)
