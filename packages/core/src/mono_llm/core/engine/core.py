"""The synchronous engine: add requests, run steps, collect outputs.

One `step()` = schedule (which slices run) -> one ragged model batch -> sample the rows whose
slice reached the end of its sequence -> append tokens, check stops, detokenize -> outputs.
`LLM` drives it in a loop; `AsyncLLM` drives it from a background thread.
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
from mono_llm.core.engine.output_processor import make_request_output
from mono_llm.core.engine.request import Request, Sequence, SequenceStatus
from mono_llm.core.engine.scheduler import Scheduler, SchedulerOutput
from mono_llm.core.errors import (
    EngineError,
    EngineOverloadedError,
    InvalidRequestError,
    PromptTooLongError,
    UnsupportedTaskError,
)
from mono_llm.core.inputs import PromptType, parse_prompt
from mono_llm.core.kv_cache import KVCacheManager
from mono_llm.core.outputs import Logprob, RequestMetrics, RequestOutput, SchedulerStats
from mono_llm.core.pooling.engine import PoolingEngine
from mono_llm.core.pooling_params import PoolingParams
from mono_llm.core.sampling_params import SamplingParams
from mono_llm.core.tokenizer import decodable_vocab_size, load_tokenizer, tokenizer_info
from mono_llm.core.worker.batch import LogitsWanted, ModelBatch, SequenceSlice
from mono_llm.core.worker.sampler import Sampler, SamplerOutput, compute_logprobs, num_top_logprobs

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
        # Pooling models (issue 6): set before the runner and scheduler read the config.
        self.pooling = PoolingEngine.for_config(config)
        if model_runner is None and self.pooling is not None:
            model_runner = self.pooling.make_runner()
        if model_runner is None:
            from mono_llm.core.worker.model_runner import ModelRunner

            model_runner = ModelRunner(config)
        self.model_runner = model_runner
        if self.pooling is not None:
            self.pooling.attach(model_runner)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(self.model_config)
        self.vocab_size: int = model_runner.vocab_size
        # Checkpoints pad the embedding past the tokenizer (Qwen2: 151936 rows, 151665
        # tokens); ids in the padding decode to nothing, so they are never sampled.
        self.decodable_vocab_size = min(self.vocab_size, decodable_vocab_size(self.tokenizer))
        self.kv_cache = KVCacheManager(
            model_runner.num_blocks,
            model_runner.block_size,
            enable_caching=config.cache_config.enable_prefix_caching,
        )
        self.scheduler = Scheduler(config.scheduler_config, self.kv_cache)
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
        self.num_generation_tokens = 0
        self.num_steps = 0
        # Requests that failed inside a step for a reason of their own (a detokenizer or
        # grammar error): removed from the engine, reported once through `pop_failures`, so
        # one bad request fails alone instead of taking the step loop down with it.
        self._failures: dict[str, Exception] = {}

    @classmethod
    def from_engine_args(cls, args: EngineArgs) -> EngineCore:
        return cls(args.create_engine_config())

    def get_default_sampling_params(self) -> dict[str, Any]:
        return default_sampling_params(self.model_config)

    # ------------------------------------------------------------------ requests
    def process_prompt(
        self, prompt: PromptType, params: SamplingParams | None
    ) -> tuple[str | None, list[int]]:
        """Tokenize and validate a prompt (thread-safe: touches no engine state)."""
        text, token_ids = parse_prompt(prompt)
        if token_ids is None:
            token_ids = self.tokenizer.encode(text, add_special_tokens=True)
        if params is not None and params.truncate_prompt_tokens is not None:
            token_ids = token_ids[-params.truncate_prompt_tokens :]
        if not token_ids:
            raise InvalidRequestError("The prompt must not be empty.", param="prompt")
        max_model_len = self.max_seq_len
        limit = max_model_len - 1 if params is not None else max_model_len
        if len(token_ids) > limit:
            raise PromptTooLongError(len(token_ids), max_model_len)
        if max(token_ids) >= self.vocab_size or min(token_ids) < 0:
            raise InvalidRequestError(
                f"Token id {max(token_ids)} is out of vocabulary (size {self.vocab_size}).",
                param="prompt_token_ids",
            )
        return text, token_ids

    def validate_sampling_params(self, params: SamplingParams) -> SamplingParams:
        """Check params against this model and resolve its stop tokens (returns a copy)."""
        if self.pooling is not None:
            self.pooling.reject_generation()  # a pooling model cannot generate
        # Each candidate is a sequence the scheduler must hold at once with its siblings; a
        # huge n would also build millions of sequences inside the engine loop, stalling
        # every other request (n=10**6 did), so it is refused up front.
        max_num_seqs = self.config.scheduler_config.max_num_seqs
        if params.num_candidates > max_num_seqs:
            name = "best_of" if (params.best_of or 0) > params.n else "n"
            raise InvalidRequestError(
                f"{name}={params.num_candidates} is more than the {max_num_seqs} sequences this "
                f"engine runs at once (--max-num-seqs).",
                param=name,
            )
        max_logprobs = self.model_config.max_logprobs
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(params, name)
            if value is not None and max_logprobs != -1 and (value == -1 or value > max_logprobs):
                raise InvalidRequestError(
                    f"Requested {name}={value}, more than the maximum allowed {max_logprobs}.",
                    param=name,
                )
        for name, ids in (
            ("logit_bias", list((params.logit_bias or {}).keys())),
            ("allowed_token_ids", params.allowed_token_ids or []),
            ("stop_token_ids", params.stop_token_ids or []),
        ):
            bad = [t for t in ids if not 0 <= int(t) < self.vocab_size]
            if bad:
                raise InvalidRequestError(
                    f"{name} contains token ids out of vocabulary: {bad[:5]}.", param=name
                )
        if params.allowed_token_ids is not None and not params.allowed_token_ids:
            raise InvalidRequestError(
                "allowed_token_ids must not be empty.", param="allowed_token_ids"
            )
        structured = params.structured_outputs
        if structured is not None and not structured.is_empty and self.grammar_factory is None:
            raise InvalidRequestError(
                "Structured outputs are not available on this engine.", param="structured_outputs"
            )
        stop_ids = set(params.stop_token_ids or [])
        if not params.ignore_eos:
            stop_ids |= self.eos_token_ids
        return params.clone(
            logit_bias={int(k): float(v) for k, v in params.logit_bias.items()}
            if params.logit_bias
            else None,
            all_stop_token_ids=stop_ids,
        )

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
    ) -> Request:
        """Queue a generation request. Raises InvalidRequestError / PromptTooLongError /
        EngineOverloadedError. Pass prompt_token_ids (from `process_prompt`) to skip tokenizing."""
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
        if prompt_token_ids is None:
            prompt_text, prompt_token_ids = self.process_prompt(prompt, params)
        params = self.validate_sampling_params(params)
        self._check_waiting_bound()
        arrival_time = time.time() if arrival_time is None else arrival_time
        max_tokens = self.max_seq_len - len(prompt_token_ids)
        if params.max_tokens is not None:
            max_tokens = min(max_tokens, params.max_tokens)
        num_seqs = params.num_candidates
        bad_words = self._bad_words_token_ids(params.bad_words)
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
            )
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
        return self._pooling_engine(params).prepare(self.tokenizer, prompt, params)

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
            prompt_text, prompt_token_ids, params = pooling.prepare(self.tokenizer, prompt, params)
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

    def _bad_words_token_ids(self, words: list[str] | None) -> list[list[int]]:
        """Token sequences of each bad word, alone and after a space (as vLLM tokenizes them)."""
        sequences: list[list[int]] = []
        for word in words or []:
            for variant in (word, " " + word.lstrip()):
                ids = self.tokenizer.encode(variant, add_special_tokens=False)
                if ids and ids not in sequences and max(ids) < self.vocab_size:
                    sequences.append(ids)
        return sequences

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
        return request

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    @property
    def num_unfinished_requests(self) -> int:
        return len(self.requests)

    # ------------------------------------------------------------------ the step
    def step(self) -> list[RequestOutput]:
        """Run one engine step; returns the outputs due for requests that progressed."""
        sched = self.scheduler.schedule()
        if sched.is_empty:
            if self.scheduler.has_unfinished() and not self.scheduler.running:
                # Nothing runs and nothing can be admitted into an empty cache: a bug, and
                # looping on it would hang every caller.
                raise EngineError("the scheduler cannot admit any waiting request")
            return []
        self.num_steps += 1
        now = time.time()
        for item in sched.scheduled:
            request = self.requests[item.seq.request_id]
            if request.metrics.first_scheduled_time is None:
                request.metrics.first_scheduled_time = now
                self._num_waiting_requests -= 1
        batch = ModelBatch(
            [
                SequenceSlice(
                    token_ids=item.seq.token_ids[item.start : item.start + item.num_new_tokens],
                    num_computed_tokens=item.start,
                    block_table=self.kv_cache.block_table(item.seq),  # read-only, no copy
                    logits=item.logits,
                )
                for item in sched.scheduled
            ]
        )
        if self.pooling is not None:
            return self.pooling.run_step(self, sched, batch)
        logits = self.model_runner.execute(batch)  # [rows, vocab] float32
        self.scheduler.update(sched)
        return self._process(sched, batch, logits)

    @torch.inference_mode()
    def _process(
        self, sched: SchedulerOutput, batch: ModelBatch, logits: torch.Tensor
    ) -> list[RequestOutput]:
        sample_rows: list[int] = []
        sample_seqs: list[Sequence] = []
        pooled_seqs: list[Sequence] = []
        prompt_rows: list[int] = []
        prompt_targets: list[int] = []
        prompt_owners: list[tuple[Sequence, int]] = []  # (seq, position of the target token)
        row = 0
        for item, count in zip(sched.scheduled, batch.logits_row_counts(), strict=True):
            seq = item.seq
            if item.logits == LogitsWanted.ALL:
                # Row j predicts token start+j+1; keep the prompt positions still missing
                # (a recomputation after preemption already has the earlier ones).
                first_missing = len(seq.prompt_logprobs)
                for offset in range(count):
                    target = item.start + offset + 1
                    if first_missing <= target < seq.num_prompt_tokens:
                        prompt_rows.append(row + offset)
                        prompt_targets.append(seq.token_ids[target])
                        prompt_owners.append((seq, target))
            if item.samples:
                if seq.is_pooling:
                    pooled_seqs.append(seq)
                elif count:
                    sample_rows.append(row + count - 1)
                    sample_seqs.append(seq)
            row += count
        if prompt_rows:
            self._record_prompt_logprobs(logits, prompt_rows, prompt_targets, prompt_owners)
        changed: dict[str, Sequence] = {}
        if sample_seqs:
            if len(sample_rows) == logits.shape[0]:  # every row samples (e.g. pure decode)
                sample_logits = logits
            else:
                rows = torch.tensor(sample_rows, device=logits.device)
                sample_logits = logits.index_select(0, rows)
            if self.decodable_vocab_size < sample_logits.shape[-1]:
                sample_logits[:, self.decodable_vocab_size :] = float("-inf")
            result = self.sampler(sample_logits, sample_seqs)
            self._append_tokens(sample_seqs, result, changed)
        for seq in pooled_seqs:  # pooling requests finish after their prefill (issue 6)
            self.scheduler.finish([seq], SequenceStatus.FINISHED_STOPPED)
            changed[seq.seq_id] = seq
        return self._collect_outputs(changed)

    def _record_prompt_logprobs(
        self,
        logits: torch.Tensor,
        rows: list[int],
        targets: list[int],
        owners: list[tuple[Sequence, int]],
    ) -> None:
        device = logits.device
        num_top = max(
            num_top_logprobs(seq.sampling_params.prompt_logprobs, self.vocab_size)
            for seq, _ in owners
        )
        chosen, ranks, top_ids, top_lps = compute_logprobs(
            logits.index_select(0, torch.tensor(rows, device=device)),
            torch.tensor(targets, device=device),
            num_top,
        )
        chosen_l, ranks_l = chosen.tolist(), ranks.tolist()
        top_ids_l, top_lps_l = top_ids.tolist(), top_lps.tolist()
        for i, (seq, _) in enumerate(owners):
            k = num_top_logprobs(seq.sampling_params.prompt_logprobs, self.vocab_size)
            seq.prompt_logprobs.append(
                self._logprob_dict(
                    targets[i], chosen_l[i], ranks_l[i], top_ids_l[i][:k], top_lps_l[i][:k]
                )
            )

    def _logprob_dict(
        self, token: int, logprob: float, rank: int, top_ids: list[int], top_lps: list[float]
    ) -> dict[int, Logprob]:
        info = tokenizer_info(self.tokenizer)
        entry = {token: Logprob(logprob, rank, info.decode_token(token))}
        for position, (tid, lp) in enumerate(zip(top_ids, top_lps, strict=True), start=1):
            if tid not in entry:
                entry[tid] = Logprob(lp, position, info.decode_token(tid))
        return entry

    def _append_tokens(
        self, seqs: list[Sequence], result: SamplerOutput, changed: dict[str, Sequence]
    ) -> None:
        tokens = result.sampled.tolist()  # the step's one host sync
        logprob_lists = None
        if result.sampled_logprob is not None:
            logprob_lists = (
                result.sampled_logprob.tolist(),
                result.sampled_rank.tolist(),
                result.top_ids.tolist(),
                result.top_logprobs.tolist(),
            )
        now = time.time()
        self.num_generation_tokens += len(tokens)
        for i, (seq, token) in enumerate(zip(seqs, tokens, strict=True)):
            if seq.request_id in self._failures:
                continue  # a sibling candidate's failure already dropped the request
            try:
                self._append_token(seq, token, i, logprob_lists, now, changed)
            except Exception as exc:  # this request's own failure; the batch goes on
                self._fail_request(seq.request_id, exc)

    def _append_token(
        self,
        seq: Sequence,
        token: int,
        i: int,
        logprob_lists: tuple[list[Any], ...] | None,
        now: float,
        changed: dict[str, Sequence],
    ) -> None:
        """One sampled token into its sequence: logprobs, grammar, detokenize, stop checks."""
        params = seq.sampling_params
        request = self.requests[seq.request_id]
        seq.append_token(token)
        changed[seq.seq_id] = seq
        if request.metrics.first_token_time is None:
            request.metrics.first_token_time = now
        request.metrics.last_token_time = now
        if logprob_lists is not None and params.needs_logprobs:
            logprob, rank, top_ids, top_lps = (lst[i] for lst in logprob_lists)
            seq.cumulative_logprob += logprob
            if params.logprobs is not None:
                k = num_top_logprobs(params.logprobs, self.vocab_size)
                seq.logprobs.append(
                    self._logprob_dict(token, logprob, rank, top_ids[:k], top_lps[:k])
                )
        if seq.grammar is not None:
            seq.grammar.accept_token(token)
        status = self._check_stop(seq, token)
        if status is not None:
            if seq.detokenizer is not None:
                seq.detokenizer.flush()
            self.scheduler.finish([seq], status)

    def _check_stop(self, seq: Sequence, token: int) -> SequenceStatus | None:
        params = seq.sampling_params
        past_min = seq.num_output_tokens > params.min_tokens
        reached_min = seq.num_output_tokens >= params.min_tokens
        if seq.detokenizer is not None:
            stop_str = seq.detokenizer.update([token])
            if stop_str is not None and past_min:
                seq.stop_reason = stop_str
                return SequenceStatus.FINISHED_STOPPED
        if reached_min:
            if not params.ignore_eos and token in self.eos_token_ids:
                return SequenceStatus.FINISHED_STOPPED
            if token in (params.stop_token_ids or ()):
                seq.stop_reason = token
                return SequenceStatus.FINISHED_STOPPED
        if seq.grammar is not None and seq.grammar.is_terminated():
            return SequenceStatus.FINISHED_STOPPED
        if seq.num_output_tokens >= seq.max_tokens:
            return SequenceStatus.FINISHED_LENGTH
        return None

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
        return outputs

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
