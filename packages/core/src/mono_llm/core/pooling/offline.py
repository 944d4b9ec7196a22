"""`LLM.encode`, `LLM.embed`, `LLM.classify` and `LLM.score` (vLLM's offline pooling API).

A mixin of `LLM`: it drives the same `EngineCore` (`self.llm_engine`) with pooling
requests, which the scheduler batches under its token budget like any prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from mono_llm.core.engine.offline_loop import run_until_finished
from mono_llm.core.errors import InvalidRequestError, UnsupportedTaskError
from mono_llm.core.inputs import PromptType
from mono_llm.core.outputs import (
    ClassificationRequestOutput,
    EmbeddingRequestOutput,
    PoolingRequestOutput,
    ScoringRequestOutput,
)
from mono_llm.core.pooling.scoring import (
    ScoreInput,
    cosine_score,
    cross_encoder_prompt,
    pair_inputs,
    unique_sides,
)
from mono_llm.core.pooling_params import PoolingParams


class PoolingLLMMixin:
    """Pooling entry points of `LLM`; expects `self.llm_engine` and `self._next_request_id`."""

    llm_engine: Any
    _next_request_id: Callable[[], str]

    def encode(
        self,
        prompts: PromptType | Sequence[PromptType],
        pooling_params: PoolingParams | Sequence[PoolingParams] | None = None,
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = True,
        pooling_task: str | None = None,
    ) -> list[PoolingRequestOutput]:
        """The model's pooled output for each prompt (task "encode" unless told otherwise)."""
        prompt_list = [prompts] if isinstance(prompts, (str, dict)) else list(prompts)
        if pooling_params is None or isinstance(pooling_params, PoolingParams):
            params_list = [pooling_params or PoolingParams()] * len(prompt_list)
        else:
            params_list = list(pooling_params)
            if len(params_list) != len(prompt_list):
                raise InvalidRequestError(
                    f"Got {len(prompt_list)} prompts but {len(params_list)} pooling params.",
                    param="pooling_params",
                )
        resolved = []
        for params in params_list:
            params = params.clone()
            if pooling_task is not None:
                params.task = pooling_task
            elif params.task is None:
                params.task = "encode"
            if truncate_prompt_tokens is not None:
                params.truncate_prompt_tokens = truncate_prompt_tokens
            resolved.append(params)
        return self._run_pooling(prompt_list, resolved, use_tqdm)

    def embed(
        self,
        prompts: PromptType | Sequence[PromptType],
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = True,
        pooling_params: PoolingParams | Sequence[PoolingParams] | None = None,
    ) -> list[EmbeddingRequestOutput]:
        """Sentence embeddings (normalized as the model's sentence-transformers config says)."""
        outputs = self.encode(
            prompts,
            pooling_params,
            truncate_prompt_tokens=truncate_prompt_tokens,
            use_tqdm=use_tqdm,
            pooling_task="embed",
        )
        return [EmbeddingRequestOutput.from_base(out) for out in outputs]

    def classify(
        self,
        prompts: PromptType | Sequence[PromptType],
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = True,
        pooling_params: PoolingParams | Sequence[PoolingParams] | None = None,
    ) -> list[ClassificationRequestOutput]:
        """Class probabilities (softmax over labels; sigmoid for one-label models)."""
        outputs = self.encode(
            prompts,
            pooling_params,
            truncate_prompt_tokens=truncate_prompt_tokens,
            use_tqdm=use_tqdm,
            pooling_task="classify",
        )
        return [ClassificationRequestOutput.from_base(out) for out in outputs]

    def score(
        self,
        data_1: ScoreInput | Sequence[ScoreInput],
        data_2: ScoreInput | Sequence[ScoreInput],
        /,
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = True,
        pooling_params: PoolingParams | None = None,
    ) -> list[ScoringRequestOutput]:
        """Relevance of each (data_1, data_2) pair: 1:1, 1:N or N:N.

        A cross-encoder reads each pair as one input; an embedding model embeds both sides
        and returns their cosine similarity.
        """
        engine = self.llm_engine
        pooling = engine.pooling
        if pooling is None or not pooling.tasks.supports("score"):
            supported = pooling.tasks.supported_tasks if pooling is not None else ["generate"]
            raise UnsupportedTaskError(
                "score", list(supported), model=engine.model_config.served_model_name
            )
        pairs = pair_inputs(data_1, data_2)
        params = (pooling_params or PoolingParams()).clone()
        if truncate_prompt_tokens is not None:
            params.truncate_prompt_tokens = truncate_prompt_tokens
        if pooling.tasks.runner == "classify":
            prompts, params_list = [], []
            for query, document in pairs:
                prompt, pair_params = cross_encoder_prompt(
                    engine.tokenizer, query, document, params
                )
                prompts.append(prompt)
                params_list.append(pair_params)
            outputs = self._run_pooling(prompts, params_list, use_tqdm)
            return [ScoringRequestOutput.from_base(out) for out in outputs]
        params.task = "embed"
        texts, indexed = unique_sides(pairs)
        embeddings = self._run_pooling(texts, [params] * len(texts), use_tqdm)
        return [
            ScoringRequestOutput.from_base(cosine_score(embeddings[i], embeddings[j]))
            for i, j in indexed
        ]

    def _run_pooling(
        self, prompts: list[PromptType], params_list: list[PoolingParams], use_tqdm: bool
    ) -> list[PoolingRequestOutput]:
        engine = self.llm_engine
        # Validate everything first, so a bad prompt fails the call before any work is queued.
        prepared = [
            engine.process_pooling_prompt(prompt, params)
            for prompt, params in zip(prompts, params_list, strict=True)
        ]

        def submit(index: int, request_id: str) -> None:
            text, token_ids, params = prepared[index]
            engine.add_pooling_request(
                request_id, token_ids, params, prompt_text=text, prompt_token_ids=token_ids
            )

        return run_until_finished(engine, len(prepared), submit, self._next_request_id, use_tqdm)
