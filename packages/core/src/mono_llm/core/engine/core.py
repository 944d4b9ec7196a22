"""The synchronous engine: add requests, run steps, collect outputs.

One `step()` = schedule (which slices run) -> one ragged model batch -> the step processor
(`GenerationStep`: sample, append tokens, check stops, detokenize; `PoolingEngine`: pool) ->
outputs for the requests that changed. Prompts and parameters are checked before admission by
the `InputProcessor`. `LLM` drives it in a loop; `AsyncLLM` drives it from a background thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch

from mono_llm.core.config import EngineArgs, EngineConfig
from mono_llm.core.engine.detokenizer import IncrementalDetokenizer
from mono_llm.core.engine.generation_config import default_sampling_params, eos_token_ids
from mono_llm.core.engine.generation_step import GenerationStep
from mono_llm.core.engine.input_processor import InputProcessor
from mono_llm.core.engine.output_processor import make_request_output
from mono_llm.core.engine.request import Request, Sequence, SequenceStatus
from mono_llm.core.engine.scheduler import Scheduler, SchedulerOutput
from mono_llm.core.engine.step import StepProcessor
from mono_llm.core.engine.step_trace import StepPhases, StepTrace, step_record
from mono_llm.core.errors import (
    EngineError,
    EngineOverloadedError,
    InvalidRequestError,
    UnsupportedTaskError,
)
from mono_llm.core.inputs import PromptType, encoder_features_of
from mono_llm.core.kv_cache import KVCacheManager
from mono_llm.core.outputs import RequestMetrics, RequestOutput, SchedulerStats
from mono_llm.core.pooling.engine import PoolingEngine
from mono_llm.core.pooling_params import PoolingParams
from mono_llm.core.sampling_params import SamplingParams
from mono_llm.core.tokenizer import decodable_vocab_size, load_tokenizer
from mono_llm.core.worker.batch import ModelBatch, SequenceSlice
from mono_llm.core.worker.sampler import Sampler

logger = logging.getLogger(__name__)

# (structured_outputs params, tokenizer, vocab size) -> grammar matcher (sampler protocol)
GrammarFactory = Callable[[Any, Any, int], Any]


class EngineCore:
    """Owns the model runner, KV cache manager, scheduler and sampler of one model."""

    def __init__(
        self,
        config: EngineConfig,
        *,
        model_runner: Any = None,
        tokenizer: Any = None,
        grammar_factory: GrammarFactory | None = None,
    ) -> None:
        self.config = config
        self.model_config = config.model_config
        # Pooling models: set before the runner and scheduler read the config.
        self.pooling = PoolingEngine.for_config(config)
        if model_runner is None and self.pooling is not None:
            model_runner = self.pooling.make_runner()
        if model_runner is None:
            from mono_llm.core.distributed.executor import make_executor

            # The model runner itself on one device; rank 0 of N under tensor parallelism.
            model_runner = make_executor(config)
        self.model_runner = model_runner
        if self.pooling is not None:
            self.pooling.attach(model_runner)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(self.model_config)
        self.vocab_size: int = model_runner.vocab_size
        self.decodable_vocab_size = min(self.vocab_size, decodable_vocab_size(self.tokenizer))
        # Encoder–decoder models (Whisper): the decoder's KV depends on the request's encoder
        # input, which block hashes of token ids cannot see, so prefix caching stays off.
        self.is_encoder_decoder = bool(getattr(model_runner, "is_encoder_decoder", False))
        self.kv_cache = KVCacheManager(
            model_runner.num_blocks,
            model_runner.block_size,
            enable_caching=config.cache_config.enable_prefix_caching
            and not self.is_encoder_decoder,
        )
        self.scheduler = Scheduler(config.scheduler_config, self.kv_cache)
        if self.is_encoder_decoder:
            # What the runner keeps per sequence beside the KV blocks goes with them.
            free = model_runner.free_encoder_output
            self.scheduler.on_release = lambda seq: free(seq.seq_id)
        if self.pooling is not None:
            self.pooling.bind_scheduler(self.scheduler)
        self.sampler = Sampler(self.vocab_size, self.model_config.seed, model_runner.device)
        self.eos_token_ids = eos_token_ids(self.model_config, self.tokenizer)
        if grammar_factory is None:
            from mono_llm.core.engine.structured_outputs import make_grammar_factory

            grammar_factory = make_grammar_factory(
                self.tokenizer, self.vocab_size, self.eos_token_ids
            )
        self.grammar_factory = grammar_factory
        # A sequence longer than the whole KV cache could never run (it would preempt itself
        # forever), so the usable context is capped by the cache as well as by the model.
        capacity = self.kv_cache.num_blocks * self.kv_cache.block_size
        self.max_seq_len = min(self.model_config.max_model_len, capacity)
        if capacity < self.model_config.max_model_len:
            logger.warning(
                "KV cache holds %d tokens, less than max_model_len=%d: sequences are capped at %d",
                capacity,
                self.model_config.max_model_len,
                capacity,
            )
            # What the server reports (/v1/models, length errors) is the usable context.
            self.model_config.max_model_len = capacity
        self.requests: dict[str, Request] = {}
        self._num_waiting_requests = 0
        self.num_prompt_tokens = 0
        self.num_steps = 0
        # Requests that failed inside a step for a reason of their own (a detokenizer or
        # grammar error): removed from the engine, reported once through `pop_failures`, so
        # one bad request fails alone instead of taking the step loop down with it.
        self._failures: dict[str, Exception] = {}
        self.input_processor = InputProcessor(
            self.tokenizer,
            vocab_size=self.vocab_size,
            max_seq_len=self.max_seq_len,
            max_num_seqs=config.scheduler_config.max_num_seqs,
            max_logprobs=self.model_config.max_logprobs,
            eos_token_ids=self.eos_token_ids,
            structured_outputs_available=self.grammar_factory is not None,
            pooling=self.pooling,
            model_config=self.model_config,
            check_multimodal_item=getattr(
                getattr(model_runner, "model", None), "check_multimodal_item", None
            ),
        )
        self.generation_step = GenerationStep(
            model_runner,
            self.scheduler,
            self.sampler,
            self.requests,
            self.tokenizer,
            vocab_size=self.vocab_size,
            decodable_vocab_size=self.decodable_vocab_size,
            eos_token_ids=self.eos_token_ids,
            on_failure=self._fail_request,
        )
        # Generation and pooling steps behind one interface (engine/step.py).
        self.step_processor: StepProcessor = (
            self.generation_step if self.pooling is None else self.pooling
        )
        # MONO_LLM_STEP_TRACE=path: one JSON line per step (engine/step_trace.py).
        sched_config = config.scheduler_config
        self.step_trace = StepTrace.from_environment(
            model=self.model_config.served_model_name,
            device=str(getattr(model_runner, "device", config.device)),
            max_num_batched_tokens=sched_config.max_num_batched_tokens,
            max_num_seqs=sched_config.max_num_seqs,
            block_size=self.kv_cache.block_size,
            num_blocks=self.kv_cache.num_blocks,
            enable_prefix_caching=self.kv_cache.enable_caching,
            async_scheduling=config.async_scheduling,
        )
        self._trace_dropped_launches = 0

    @classmethod
    def from_engine_args(cls, args: EngineArgs) -> EngineCore:
        return cls(args.create_engine_config())

    def get_default_sampling_params(self) -> dict[str, Any]:
        return default_sampling_params(self.model_config)

    def shutdown(self) -> None:
        """Stop the executor's worker processes, if it has any (tensor parallelism), and write
        out the step trace."""
        if self.step_trace is not None:
            self.step_trace.close()
        shutdown = getattr(self.model_runner, "shutdown", None)
        if shutdown is not None:
            shutdown()

    # ------------------------------------------------------------------ requests
    def process_prompt(
        self, prompt: PromptType, params: SamplingParams | None
    ) -> tuple[str | None, list[int]]:
        """Tokenize and validate a prompt (thread-safe: touches no engine state)."""
        return self.input_processor.process_prompt(prompt, params)

    def validate_sampling_params(self, params: SamplingParams) -> SamplingParams:
        """Check params against this model and resolve its stop tokens (returns a copy)."""
        return self.input_processor.validate_sampling_params(params)

    def add_request(
        self,
        request_id: str,
        prompt: PromptType,
        params: SamplingParams | None = None,
        *,
        arrival_time: float | None = None,
        priority: int = 0,
        prompt_text: str | None = None,
        prompt_token_ids: list[int] | None = None,
        encoder_features: Any = None,
    ) -> Request:
        """Queue a generation request. Raises InvalidRequestError / PromptTooLongError /
        EngineOverloadedError. Pass prompt_token_ids (from `process_prompt`) to skip tokenizing.
        Encoder–decoder models take the encoder input (Whisper: log-mel features) here or as
        the prompt's `encoder_features`; the prompt is then the decoder prompt."""
        if isinstance(params, PoolingParams):
            return self.add_pooling_request(
                request_id,
                prompt,
                params,
                arrival_time=arrival_time,
                priority=priority,
                prompt_text=prompt_text,
                prompt_token_ids=prompt_token_ids,
            )
        self._check_new_request_id(request_id)
        params = params or SamplingParams()
        if encoder_features is None:
            encoder_features = encoder_features_of(prompt)
        self.check_encoder_features(encoder_features)
        if prompt_token_ids is None:
            prompt_text, prompt_token_ids = self.process_prompt(prompt, params)
        params = self.validate_sampling_params(params)
        self._check_waiting_bound()
        arrival_time = time.time() if arrival_time is None else arrival_time
        max_tokens = self.max_seq_len - len(prompt_token_ids)
        if params.max_tokens is not None:
            max_tokens = min(max_tokens, params.max_tokens)
        num_seqs = params.num_candidates
        bad_words = self.input_processor.bad_words_token_ids(params.bad_words)
        sequences = []
        for index in range(num_seqs):
            seq = Sequence(
                request_id if num_seqs == 1 else f"{request_id}#{index}",
                request_id,
                index,
                prompt_token_ids,
                sampling_params=params,
                max_tokens=max_tokens,
                priority=priority,
                arrival_time=arrival_time,
                mm_items=getattr(prompt_token_ids, "mm_items", None),
            )
            seq.mrope_positions = getattr(prompt_token_ids, "mrope_positions", None)
            seq.mrope_delta = getattr(prompt_token_ids, "mrope_delta", 0)
            if params.seed is not None:
                seq.generator = self.sampler.make_generator(params.seed + index)
            if params.detokenize:
                seq.detokenizer = IncrementalDetokenizer(self.tokenizer, prompt_token_ids, params)
            if params.structured_outputs is not None and not params.structured_outputs.is_empty:
                assert self.grammar_factory is not None
                seq.grammar = self.grammar_factory(
                    params.structured_outputs, self.tokenizer, self.vocab_size
                )
            if index:
                seq.wait_for = seq.prompt_leader = sequences[0]
            seq.prompt_logprobs = [None] if params.prompt_logprobs is not None else []
            seq.bad_words_token_ids = bad_words
            if encoder_features is not None:
                seq.encoder_features = encoder_features
                seq.encoder_cost = self.model_runner.num_encoder_positions
            sequences.append(seq)
        request = Request(
            request_id=request_id,
            prompt=prompt_text,
            prompt_token_ids=list(prompt_token_ids),
            sampling_params=params,
            sequences=sequences,
            metrics=RequestMetrics(arrival_time=arrival_time),
            sent_text_len=[0] * num_seqs,
            sent_tokens=[0] * num_seqs,
        )
        return self._enqueue(request)

    def check_encoder_features(self, features: Any) -> None:
        """An encoder–decoder model needs its encoder input, of its shape; other models take
        none. Checked when a request is added: a malformed input inside a step would fail it."""
        name = self.model_config.served_model_name
        if self.is_encoder_decoder and features is None:
            raise InvalidRequestError(
                f"{name} is an encoder–decoder model: a request needs encoder_features (e.g. "
                "Whisper log-mel features) besides its decoder prompt.",
                param="encoder_features",
            )
        if not self.is_encoder_decoder and features is not None:
            raise InvalidRequestError(
                f"{name} takes no encoder_features.", param="encoder_features"
            )
        expected = self.model_runner.encoder_input_shape if self.is_encoder_decoder else None
        if features is not None and (
            not isinstance(features, torch.Tensor) or tuple(features.shape) != expected
        ):
            shape = list(features.shape) if isinstance(features, torch.Tensor) else type(features)
            raise InvalidRequestError(
                f"encoder_features must be a tensor of shape {list(expected or ())}, got {shape}.",
                param="encoder_features",
            )

    def _check_new_request_id(self, request_id: str) -> None:
        if request_id in self.requests:
            raise InvalidRequestError(
                f"Request id {request_id!r} is already running.", param="request_id"
            )

    def _check_waiting_bound(self) -> None:
        """Refuse a request past --max-waiting-requests (the server answers 503)."""
        bound = self.config.scheduler_config.max_waiting_requests
        if bound is not None and self._num_waiting_requests >= bound:
            raise EngineOverloadedError(
                f"The engine has {self._num_waiting_requests} requests waiting (limit {bound}); "
                "retry later."
            )

    def _enqueue(self, request: Request) -> Request:
        """Register an admitted request (generation or pooling) and queue its sequences."""
        self.requests[request.request_id] = request
        self._num_waiting_requests += 1
        self.num_prompt_tokens += len(request.prompt_token_ids)
        for seq in request.sequences:
            self.scheduler.add(seq)
        return request

    def process_pooling_prompt(
        self, prompt: PromptType, params: PoolingParams
    ) -> tuple[str | None, list[int], PoolingParams]:
        """Tokenize and validate a pooling prompt; returns the params with the task resolved."""
        self._pooling_engine(params)
        return self.input_processor.process_pooling_prompt(prompt, params)

    def add_pooling_request(
        self,
        request_id: str,
        prompt: PromptType,
        params: PoolingParams,
        *,
        arrival_time: float | None = None,
        priority: int = 0,
        prompt_text: str | None = None,
        prompt_token_ids: list[int] | None = None,
    ) -> Request:
        """Queue an embed / classify / score / encode request (finishes after its prefill).
        Pass prompt_token_ids with params from `process_pooling_prompt` to skip tokenizing."""
        pooling = self._pooling_engine(params)
        self._check_new_request_id(request_id)
        if prompt_token_ids is None or params.task is None:
            prompt_text, prompt_token_ids, params = self.input_processor.process_pooling_prompt(
                prompt, params
            )
        self._check_waiting_bound()
        return self._enqueue(
            pooling.make_request(
                request_id,
                params,
                prompt_text,
                prompt_token_ids,
                arrival_time=time.time() if arrival_time is None else arrival_time,
                priority=priority,
            )
        )

    def _pooling_engine(self, params: PoolingParams) -> PoolingEngine:
        if self.pooling is None:
            raise UnsupportedTaskError(
                params.task or "embed", ["generate"], model=self.model_config.served_model_name
            )
        return self.pooling

    def abort_request(self, request_ids: str | Iterable[str]) -> list[RequestOutput]:
        """Finish requests with "abort", free their blocks; returns their final outputs."""
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        outputs = []
        for request_id in request_ids:
            request = self._remove_request(request_id)
            if request is None:
                continue
            out = make_request_output(request)
            if out is not None:
                outputs.append(out)
        return outputs

    def pop_failures(self) -> dict[str, Exception]:
        """Requests that failed in the steps since the last call, with their errors."""
        failures, self._failures = self._failures, {}
        return failures

    def _fail_request(self, request_id: str, exc: Exception) -> None:
        """Drop one request whose own processing raised, freeing its blocks."""
        logger.error("request %s failed inside the engine: %r", request_id, exc, exc_info=exc)
        if self._remove_request(request_id) is not None:
            self._failures[request_id] = exc

    def _remove_request(self, request_id: str) -> Request | None:
        """Take a request out of the engine, its sequences finished as aborted and their
        blocks freed; None if it is not (or no longer) here."""
        request = self.requests.pop(request_id, None)
        if request is None:
            return None
        if request.metrics.first_scheduled_time is None:
            self._num_waiting_requests -= 1
        self.scheduler.finish(request.sequences, SequenceStatus.FINISHED_ABORTED)
        self._release_runner_state(request_id)
        return request

    @property
    def num_waiting_requests(self) -> int:
        """Admitted requests not scheduled yet (what --max-waiting-requests bounds)."""
        return self._num_waiting_requests

    @property
    def num_generation_tokens(self) -> int:
        return self.generation_step.num_generation_tokens

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    @property
    def num_unfinished_requests(self) -> int:
        return len(self.requests)

    # ------------------------------------------------------------------ the step
    def step(self) -> list[RequestOutput]:
        """Run one engine step; returns the outputs due for requests that progressed."""
        if self.step_trace is not None:
            return self._traced_step(self.step_trace)
        sched = self.scheduler.schedule()
        if sched.is_empty:
            self._check_progress()
            return []
        batch = self._start_step(sched)
        return self._collect_outputs(self.step_processor.run(sched, batch))

    def _traced_step(self, trace: StepTrace) -> list[RequestOutput]:
        """`step`, timing its phases and writing its trace line."""
        t, start, cpu = time.monotonic(), time.perf_counter(), time.thread_time()
        sched = self.scheduler.schedule()
        if sched.is_empty:
            self._check_progress()
            return []
        queue_s: list[float] = []
        batch = self._start_step(sched, queue_s)
        queues = (self.scheduler.num_waiting, self.scheduler.num_running)
        phases = StepPhases()
        phases.mark("schedule")
        self.generation_step.phases = phases
        try:
            changed = self.step_processor.run(sched, batch)
        finally:
            self.generation_step.phases = None
        if len(phases.marks) == 1:  # a pooling step marks no phases of its own
            phases.mark("execute")
        ttft_s = self._first_token_latencies(sched)
        outputs = self._collect_outputs(changed)
        phases.mark("outputs")
        phases.cpu_s = time.thread_time() - cpu
        runner = getattr(self.model_runner, "driver", self.model_runner)  # tensor parallel
        dropped = getattr(runner, "num_dropped_launches", 0)
        trace.write(
            step_record(
                self.num_steps,
                t,
                start,
                phases,
                sched,
                queues,
                runner,
                queue_s,
                ttft_s,
                dropped - self._trace_dropped_launches,
            )
        )
        self._trace_dropped_launches = dropped
        if not self.requests:
            # Idle from here: write the lines out now, so that an engine process killed while
            # idle (a signal to the server's process group) loses none of them.
            trace.flush()
        return outputs

    def _first_token_latencies(self, sched: SchedulerOutput) -> list[float]:
        """For requests whose first token this step sampled: seconds since their arrival."""
        latencies = []
        for item in sched.scheduled:
            seq = item.seq
            if item.samples and seq.index == 0 and seq.num_output_tokens == 1:
                request = self.requests.get(seq.request_id)
                metrics = request.metrics if request is not None else None
                if metrics is not None and metrics.first_token_time is not None:
                    latencies.append(metrics.first_token_time - metrics.arrival_time)
        return latencies

    def _check_progress(self) -> None:
        if self.scheduler.has_unfinished() and not self.scheduler.running:
            # Nothing runs and nothing can be admitted into an empty cache: a bug, and
            # looping on it would hang every caller.
            raise EngineError("the scheduler cannot admit any waiting request")

    def _start_step(self, sched: SchedulerOutput, queue_s: list[float] | None = None) -> ModelBatch:
        """Count the step, stamp requests scheduled for the first time (their wait since
        arrival into `queue_s` when tracing), and flatten the scheduled slices."""
        self.num_steps += 1
        now = time.time()
        for item in sched.scheduled:
            request = self.requests[item.seq.request_id]
            if request.metrics.first_scheduled_time is None:
                request.metrics.first_scheduled_time = now
                self._num_waiting_requests -= 1
                if queue_s is not None:
                    queue_s.append(now - request.metrics.arrival_time)
        return ModelBatch(
            [
                SequenceSlice(
                    token_ids=item.seq.token_ids[item.start : item.start + item.num_new_tokens],
                    num_computed_tokens=item.start,
                    block_table=self.kv_cache.block_table(item.seq),  # read-only, no copy
                    logits=item.logits,
                    request_id=item.seq.request_id,
                    mm_items=item.seq.mm_items,
                    mrope_positions=item.seq.mrope_positions,
                    mrope_delta=item.seq.mrope_delta,
                    encoder_key=item.seq.seq_id if item.seq.encoder_features is not None else None,
                    encoder_features=item.seq.encoder_features,
                )
                for item in sched.scheduled
            ]
        )

    def _collect_outputs(self, changed: dict[str, Sequence]) -> list[RequestOutput]:
        outputs = []
        changed_ids = set(changed)
        for request_id in dict.fromkeys(seq.request_id for seq in changed.values()):
            request = self.requests.get(request_id)
            if request is None:
                continue
            out = make_request_output(request, changed_ids)
            if out is not None:
                outputs.append(out)
            if request.is_finished:
                del self.requests[request_id]
                self._release_runner_state(request_id)
        return outputs

    def _release_runner_state(self, request_id: str) -> None:
        """Let the runner drop what it keeps for a request (encoder outputs of its media)."""
        release = getattr(self.model_runner, "release_request", None)
        if release is not None:
            release(request_id)

    # ------------------------------------------------------------------ stats
    def get_stats(self) -> SchedulerStats:
        return SchedulerStats(
            num_running_reqs=self.scheduler.num_running,
            num_waiting_reqs=self.scheduler.num_waiting,
            kv_cache_usage=self.kv_cache.usage,
            num_preemptions=self.scheduler.num_preemptions,
            prefix_cache_queries=self.kv_cache.prefix_cache_queries,
            prefix_cache_hits=self.kv_cache.prefix_cache_hits,
            num_prompt_tokens=self.num_prompt_tokens,
            num_generation_tokens=self.num_generation_tokens,
        )

    def reset_prefix_cache(self) -> bool:
        return self.kv_cache.reset_prefix_cache()
