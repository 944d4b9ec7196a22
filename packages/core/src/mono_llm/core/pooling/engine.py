"""The pooling side of `EngineCore`: admission, the pooling step and pooled outputs.

A model served for embed or classify runs pooling requests only. They take the same path
as generation (scheduler, token budget, max_num_seqs, batching across requests) and finish
after their prefill: the step's hidden states are pooled per sequence, finalized by each
request's `PoolingParams` and handed out as one `PoolingRequestOutput`.

Every prompt runs whole in one step (no chunked prefill, no prefix cache): an encoder has no
KV cache to continue from, and mean/CLS pooling needs all of a prompt's hidden states at once.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from mono_llm.core.config import EngineConfig
from mono_llm.core.engine.request import Request, Sequence, SequenceStatus
from mono_llm.core.errors import (
    InvalidRequestError,
    PromptTooLongError,
    UnsupportedTaskError,
)
from mono_llm.core.inputs import PromptType, parse_prompt
from mono_llm.core.outputs import RequestMetrics
from mono_llm.core.pooling.pooler import (
    PoolingHead,
    build_pooling_head,
    check_pooling_params,
    finalize_pooled,
)
from mono_llm.core.pooling.tasks import ModelTasks, resolve_model_tasks
from mono_llm.core.pooling_params import PoolingParams

if TYPE_CHECKING:
    from mono_llm.core.engine.scheduler import Scheduler, SchedulerOutput
    from mono_llm.core.worker.batch import ModelBatch

logger = logging.getLogger(__name__)


def resolve_tasks(config: EngineConfig) -> ModelTasks:
    mc = config.model_config
    return resolve_model_tasks(
        mc.task, mc.architectures, mc.model, mc.hf_config, model_name=mc.served_model_name
    )


class PoolingEngine:
    """Present on an EngineCore whose model is served for embeddings or classification."""

    def __init__(self, config: EngineConfig, tasks: ModelTasks) -> None:
        self.config = config
        self.tasks = tasks
        self.model_name = config.model_config.served_model_name
        mc, sched = config.model_config, config.scheduler_config
        # Whole prompts in one step: no chunking, no prefix-cache hits, a budget that fits
        # the longest prompt, and no decode CUDA graphs (there are no decode steps).
        sched.enable_chunked_prefill = False
        sched.max_num_batched_tokens = max(sched.max_num_batched_tokens, mc.max_model_len)
        config.cache_config.enable_prefix_caching = False
        config.enforce_eager = True
        pooler = tasks.pooler_config
        self.max_prompt_len = mc.max_model_len
        if pooler is not None and pooler.max_seq_length:
            # sentence-transformers truncates to max_seq_length; longer prompts would give
            # embeddings the reference pipeline never produces, so they are refused (or cut by
            # truncate_prompt_tokens) like any prompt past the context window.
            self.max_prompt_len = min(self.max_prompt_len, pooler.max_seq_length)
        self.do_lower_case = bool(pooler and pooler.do_lower_case)
        self.head: PoolingHead | None = None
        self.output_size = 0
        self.model_runner: Any = None
        self.scheduler: Scheduler | None = None

    @classmethod
    def for_config(cls, config: EngineConfig) -> PoolingEngine | None:
        """A PoolingEngine when the model is served for pooling, else None (generation)."""
        tasks = resolve_tasks(config)
        if tasks.runner == "generate":
            return None
        return cls(config, tasks)

    def make_runner(self) -> Any:
        """An EncoderModelRunner for encoders; None lets EngineCore build its usual runner."""
        if not self.tasks.is_encoder:
            return None
        from mono_llm.core.pooling.runner import EncoderModelRunner

        return EncoderModelRunner(self.config)

    def attach(self, model_runner: Any) -> None:
        """Bind the runner whose model this engine pools (and size the head from it)."""
        self.model_runner = model_runner
        self.head = build_pooling_head(
            model_runner.model, self.tasks, model_runner.device, model_runner.dtype
        )
        self.output_size = self.head.output_size
        # RoBERTa-style position tables hold fewer positions than max_position_embeddings says;
        # a longer prompt would index past the table and take the engine down.
        positions = getattr(model_runner.model, "max_positions", None)
        if isinstance(positions, int) and self.tasks.is_encoder:
            self.max_prompt_len = min(self.max_prompt_len, positions)

    def bind_scheduler(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    # ------------------------------------------------------------------ admission
    def default_task(self) -> str:
        return "classify" if self.tasks.runner == "classify" else "embed"

    def prepare(
        self, tokenizer: Any, prompt: PromptType, params: PoolingParams
    ) -> tuple[str | None, list[int], PoolingParams]:
        """Tokenize, truncate and check a pooling prompt (thread-safe: no engine state). Called
        by the engine's InputProcessor, which then checks the ids against the vocabulary."""
        params = params.clone()
        if params.task is None:
            params.task = self.default_task()
        check_pooling_params(params, self.tasks, self.output_size, model=self.model_name)
        text, token_ids = parse_prompt(prompt)
        if token_ids is None:
            assert text is not None
            encoded = text.lower() if self.do_lower_case else text
            token_ids = tokenizer.encode(encoded, add_special_tokens=True)
        truncate = params.truncate_prompt_tokens
        if truncate is not None:
            if truncate > self.max_prompt_len:
                # As vLLM (and the generate path): a truncation that can never fit is refused,
                # not silently shortened to the window.
                raise InvalidRequestError(
                    f"truncate_prompt_tokens value ({truncate}) is greater than max_model_len "
                    f"({self.max_prompt_len}). Please request a smaller truncation size.",
                    param="truncate_prompt_tokens",
                )
            keep = self.max_prompt_len if truncate == -1 else truncate
            if len(token_ids) > keep:
                token_ids = self._truncate(token_ids, keep, params)
        if not token_ids:
            raise InvalidRequestError("The input must not be empty.", param="input")
        if len(token_ids) > self.max_prompt_len:
            raise PromptTooLongError(len(token_ids), self.max_prompt_len, param="input")
        # The vocabulary check is the InputProcessor's, shared with generation prompts.
        if params.token_type_split is not None and params.token_type_split > len(token_ids):
            raise InvalidRequestError("token_type_split is past the end of the prompt.")
        return text, list(token_ids), params

    def _truncate(self, token_ids: list[int], keep: int, params: PoolingParams) -> list[int]:
        """Keep the last `keep` tokens (vLLM's truncate_prompt_tokens), but for an encoder
        keep its leading [CLS]: BERT pools on it, and without it CLS pooling reads a word."""
        if self.tasks.is_encoder and keep >= 2:
            cut = len(token_ids) - keep
            if params.token_type_split is not None:
                params.token_type_split = max(params.token_type_split - cut, 1)
            return [token_ids[0], *token_ids[cut + 1 :]]
        if params.token_type_split is not None:
            params.token_type_split = max(params.token_type_split - (len(token_ids) - keep), 0)
        return token_ids[-keep:]

    def make_request(
        self,
        request_id: str,
        params: PoolingParams,
        prompt_text: str | None,
        prompt_token_ids: list[int],
        *,
        arrival_time: float,
        priority: int,
    ) -> Request:
        """A pooling request of prepared tokens: one sequence that finishes after its prefill
        (EngineCore.add_pooling_request checks and queues it like a generation request)."""
        seq = Sequence(
            request_id,
            request_id,
            0,
            prompt_token_ids,
            pooling_params=params,
            max_tokens=1,
            priority=priority,
            arrival_time=arrival_time,
        )
        return Request(
            request_id=request_id,
            prompt=prompt_text,
            prompt_token_ids=list(prompt_token_ids),
            sampling_params=None,
            sequences=[seq],
            metrics=RequestMetrics(arrival_time=arrival_time),
        )

    def reject_generation(self) -> None:
        raise UnsupportedTaskError(
            "generate", list(self.tasks.supported_tasks), model=self.model_name
        )

    # ------------------------------------------------------------------ the step
    def run(self, sched: SchedulerOutput, batch: ModelBatch) -> dict[str, Sequence]:
        """Forward the batch, pool every sequence (all are whole prompts), finish them; the
        engine's `StepProcessor` for pooling models (engine/step.py)."""
        assert self.head is not None and self.scheduler is not None
        runner = self.model_runner
        lens = [item.num_new_tokens for item in sched.scheduled]
        if self.tasks.is_encoder:
            hidden = runner.execute_hidden(batch, token_type_ids=self._token_types(sched, lens))
        else:
            hidden = runner.execute_hidden(batch)
        self.scheduler.update(sched)
        pooled = self.head(hidden, lens).cpu()  # [num_seqs, size] float32: one host sync
        changed: dict[str, Sequence] = {}
        for row, item in zip(pooled, sched.scheduled, strict=True):
            seq = item.seq
            if not item.samples:  # cannot happen without chunked prefill; kept as a guard
                continue
            seq.pooled = finalize_pooled(row, seq.pooling_params, self.tasks)
            self.scheduler.finish([seq], SequenceStatus.FINISHED_STOPPED)
            changed[seq.seq_id] = seq
        return changed

    @staticmethod
    def _token_types(sched: SchedulerOutput, lens: list[int]) -> torch.Tensor | None:
        splits = [item.seq.pooling_params.token_type_split for item in sched.scheduled]
        if all(split is None for split in splits):
            return None
        parts = []
        for split, length in zip(splits, lens, strict=True):
            types = torch.zeros(length, dtype=torch.long)
            if split is not None:
                types[split:] = 1
            parts.append(types)
        return torch.cat(parts)
