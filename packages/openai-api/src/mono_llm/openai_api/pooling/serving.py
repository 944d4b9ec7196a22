"""Turns pooling requests (embeddings, pooling, classify, score, rerank) into engine calls.

Each input becomes one engine request (`AsyncLLM.encode`), all submitted at once so the
scheduler batches them under its token budget; results come back in input order. A model
that does not serve the task answers 400 naming the tasks it does serve (the engine's
UnsupportedTaskError), e.g. /v1/embeddings on a generative model.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from typing import TYPE_CHECKING, Any

import torch

from mono_llm.core.errors import UnsupportedTaskError
from mono_llm.core.inputs import PromptType, TokensPrompt
from mono_llm.core.outputs import PoolingRequestOutput
from mono_llm.core.pooling.scoring import (
    cosine_score,
    cross_encoder_prompt,
    pair_inputs,
    unique_sides,
)
from mono_llm.core.pooling.tasks import ModelTasks
from mono_llm.core.pooling_params import PoolingParams
from mono_llm.openai_api.errors import OpenAIError
from mono_llm.openai_api.pooling.protocol import (
    ClassificationData,
    ClassificationRequest,
    ClassificationResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingResponseData,
    PoolingInput,
    PoolingRequest,
    PoolingResponse,
    PoolingResponseData,
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankUsage,
    RerankV2Response,
    ScoreRequest,
    ScoreResponse,
    ScoreResponseData,
)
from mono_llm.openai_api.protocol import UsageInfo
from mono_llm.openai_api.served_models import ServedModel
from mono_llm.openai_api.serving_base import ServingBase
from mono_llm.openai_api.streaming import merge_async_iterators

if TYPE_CHECKING:
    pass


def model_tasks(model: ServedModel) -> ModelTasks | None:
    """The pooling tasks of a served model, or None for a generative one."""
    core = getattr(model.engine, "engine", None)
    pooling = getattr(core, "pooling", None)
    return pooling.tasks if pooling is not None else None


def supported_tasks(model: ServedModel) -> list[str]:
    tasks = model_tasks(model)
    return list(tasks.supported_tasks) if tasks is not None else ["generate"]


def _require(model: ServedModel, task: str) -> ModelTasks:
    tasks = model_tasks(model)
    if tasks is None or not tasks.supports(task):
        raise UnsupportedTaskError(task, supported_tasks(model), model=model.name)
    return tasks


_EMBED_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "fp8_e4m3": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}
_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32}
_BYTE_ORDER = {"native": "=", "little": "<", "big": ">"}


def _encode_base64(data: Any, embed_dtype: str = "float32", endianness: str = "native") -> str:
    """The vector's bytes, base64. Defaults (float32, native = little-endian on the machines
    we run on) are what the openai client decodes with numpy; vLLM's `embed_dtype` and
    `endianness` pick another element type or byte order."""
    tensor = torch.as_tensor(data, dtype=torch.float32).flatten().to(_EMBED_DTYPES[embed_dtype])
    # Reinterpret as same-width integers so numpy (no bf16/fp8 types) can reorder the bytes.
    raw = tensor.view(_INT_OF_SIZE[tensor.element_size()]).numpy()
    ordered = raw.astype(raw.dtype.newbyteorder(_BYTE_ORDER[endianness]))
    return base64.b64encode(ordered.tobytes()).decode("ascii")


async def warm_up_pooling(model: ServedModel) -> None:
    """One short pooling request, so the first client does not pay for lazy setup."""
    tasks = model_tasks(model)
    if tasks is None:
        return
    task = "classify" if tasks.runner == "classify" else "embed"
    request_id = f"warmup-{uuid.uuid4().hex[:8]}"
    async for _ in model.engine.encode("warm up", PoolingParams(task=task), request_id):
        pass


class PoolingServing(ServingBase):
    def _usage(self, outputs: list[PoolingRequestOutput]) -> UsageInfo:
        """Pooling generates nothing: every token is a prompt token."""
        return self.usage(sum(len(out.prompt_token_ids) for out in outputs), 0, outputs)

    def _record(self, model: ServedModel, output: PoolingRequestOutput, start: float) -> None:
        """Count a finished pooling request in /metrics like a generation that made no tokens."""
        m = self.metrics
        if m is None:
            return
        labels = {"model_name": model.name}
        tokens = len(output.prompt_token_ids)
        m.e2e_latency.labels(**labels).observe(time.monotonic() - start)
        m.request_success.labels(finished_reason="stop", **labels).inc()
        m.prompt_tokens.labels(**labels).inc(tokens)
        m.request_prompt_tokens.labels(**labels).observe(tokens)
        m.request_generation_tokens.labels(**labels).observe(0)

    # ------------------------------------------------------------------ plumbing
    def _request_prompts(
        self, model: ServedModel, request: EmbeddingRequest | PoolingRequest
    ) -> list[PromptType]:
        """Prompts of an embeddings/pooling request: its `input`, or its chat `messages`."""
        if request.messages is None:
            assert request.input is not None
            return self._prompts(model, request.input, request.add_special_tokens is not False)
        text = model.chat_template.render(
            model.tokenizer,
            [m.model_dump(exclude_none=True) for m in request.messages],
            add_generation_prompt=request.add_generation_prompt,
            continue_final_message=request.continue_final_message,
            chat_template_kwargs=request.chat_template_kwargs,
            request_template=request.chat_template,
        )
        ids = model.tokenizer(text, add_special_tokens=bool(request.add_special_tokens)).input_ids
        return [TokensPrompt(prompt_token_ids=list(ids), prompt=text)]

    def _prompts(
        self, model: ServedModel, value: PoolingInput, add_special_tokens: bool
    ) -> list[PromptType]:
        """The engine prompts of an `input` field (string(s) or token id list(s))."""
        if isinstance(value, str):
            items: list[Any] = [value]
        elif value and all(isinstance(v, int) for v in value):
            items = [list(value)]
        else:
            items = list(value)
        if not items:
            raise OpenAIError("input must not be empty.", 400, param="input")
        prompts: list[PromptType] = []
        for item in items:
            if isinstance(item, str):
                if add_special_tokens:
                    prompts.append(item)
                else:
                    ids = model.tokenizer(item, add_special_tokens=False).input_ids
                    prompts.append(TokensPrompt(prompt_token_ids=list(ids), prompt=item))
            else:
                if not item:
                    raise OpenAIError("input token lists must not be empty.", 400, param="input")
                prompts.append(TokensPrompt(prompt_token_ids=list(item)))
        return prompts

    async def _run(
        self,
        model: ServedModel,
        prompts: list[PromptType],
        params: list[PoolingParams],
        request_id: str | None,
        priority: int,
    ) -> list[PoolingRequestOutput]:
        """Submit every prompt at once; return their outputs in input order."""
        base = request_id or uuid.uuid4().hex
        generators = [
            model.engine.encode(prompt, p, f"{base}-{i}", priority=priority)
            for i, (prompt, p) in enumerate(zip(prompts, params, strict=True))
        ]
        results: list[PoolingRequestOutput | None] = [None] * len(generators)
        start = time.monotonic()
        async for index, out in merge_async_iterators(*generators):
            if out.finished:
                results[index] = out
                if out.outputs.data is not None:
                    self._record(model, out, start)
        missing = [i for i, out in enumerate(results) if out is None or out.outputs.data is None]
        if missing:
            raise OpenAIError(f"Pooling of input {missing[0]} was aborted.", 503)
        return results  # type: ignore[return-value]

    async def _vectors(
        self,
        model: ServedModel,
        request: EmbeddingRequest | PoolingRequest,
        params: PoolingParams,
    ) -> tuple[list[list[float] | str], list[PoolingRequestOutput]]:
        """Pool every input of an /v1/embeddings or /pooling request; each vector as floats
        or, with encoding_format=base64, in the requested dtype and byte order."""
        if request.messages is not None:  # the template renders in a worker: wait off the loop
            prompts = await asyncio.to_thread(self._request_prompts, model, request)
        else:
            prompts = self._request_prompts(model, request)
        outputs = await self._run(
            model, prompts, [params] * len(prompts), request.request_id, request.priority
        )
        vectors: list[list[float] | str] = [
            _encode_base64(out.outputs.data, request.embed_dtype, request.endianness)
            if request.encoding_format == "base64"
            else out.outputs.data.tolist()
            for out in outputs
        ]
        return vectors, outputs

    # ------------------------------------------------------------------ endpoints
    async def embeddings(self, request: EmbeddingRequest) -> EmbeddingResponse:
        model = self.resolve_model(request.model)
        _require(model, "embed")
        params = PoolingParams(
            task="embed",
            dimensions=request.dimensions,
            normalize=request.normalize,
            truncate_prompt_tokens=request.truncate_prompt_tokens,
        )
        vectors, outputs = await self._vectors(model, request, params)
        data = [EmbeddingResponseData(index=i, embedding=v) for i, v in enumerate(vectors)]
        return EmbeddingResponse(model=model.name, data=data, usage=self._usage(outputs))

    async def pooling(self, request: PoolingRequest) -> PoolingResponse:
        model = self.resolve_model(request.model)
        _require(model, "encode")
        params = PoolingParams(
            task="encode",
            dimensions=request.dimensions,
            normalize=request.normalize,
            use_activation=request.resolved_activation,
            truncate_prompt_tokens=request.truncate_prompt_tokens,
        )
        vectors, outputs = await self._vectors(model, request, params)
        data = [PoolingResponseData(index=i, data=v) for i, v in enumerate(vectors)]
        return PoolingResponse(model=model.name, data=data, usage=self._usage(outputs))

    async def classify(self, request: ClassificationRequest) -> ClassificationResponse:
        model = self.resolve_model(request.model)
        tasks = _require(model, "classify")
        params = PoolingParams(
            task="classify",
            use_activation=request.resolved_activation,
            truncate_prompt_tokens=request.truncate_prompt_tokens,
        )
        prompts = self._prompts(model, request.input, request.add_special_tokens)
        outputs = await self._run(
            model, prompts, [params] * len(prompts), request.request_id, request.priority
        )
        data = []
        for i, out in enumerate(outputs):
            probs = out.outputs.data.tolist()
            best = max(range(len(probs)), key=probs.__getitem__)
            data.append(
                ClassificationData(
                    index=i,
                    label=tasks.id2label.get(best),
                    probs=probs,
                    num_classes=len(probs),
                )
            )
        return ClassificationResponse(model=model.name, data=data, usage=self._usage(outputs))

    async def _scores(
        self,
        model: ServedModel,
        first: Any,
        second: Any,
        *,
        activation: bool | None,
        truncate: int | None,
        request_id: str | None,
        priority: int,
        names: tuple[str, str] = ("text_1", "text_2"),
    ) -> tuple[list[PoolingRequestOutput], UsageInfo]:
        """One scored output per (first, second) pair (cross-encoder or embedding cosine), and
        the usage of what actually ran."""
        tasks = _require(model, "score")
        try:
            pairs = pair_inputs(first, second)
        except OpenAIError:
            raise
        except ValueError as exc:  # InvalidRequestError: rename the params to the request's
            param = getattr(exc, "param", None)
            message = str(exc).replace("text_1", names[0]).replace("text_2", names[1])
            raise OpenAIError(
                message, 400, param=names[0] if param == "text_1" else names[1]
            ) from exc
        params = PoolingParams(use_activation=activation, truncate_prompt_tokens=truncate)
        if tasks.runner == "classify":
            prompts, params_list = [], []
            for query, document in pairs:
                prompt, pair_params = cross_encoder_prompt(model.tokenizer, query, document, params)
                prompts.append(prompt)
                params_list.append(pair_params)
            outputs = await self._run(model, prompts, params_list, request_id, priority)
            return outputs, self._usage(outputs)
        params.task = "embed"
        texts, indexed = unique_sides(pairs)  # a 1:N query is embedded once
        embedded = await self._run(model, texts, [params] * len(texts), request_id, priority)
        return [cosine_score(embedded[i], embedded[j]) for i, j in indexed], self._usage(embedded)

    async def score(self, request: ScoreRequest) -> ScoreResponse:
        model = self.resolve_model(request.model)
        outputs, usage = await self._scores(
            model,
            request.first,
            request.second,
            activation=request.resolved_activation,
            truncate=request.truncate_prompt_tokens,
            request_id=request.request_id,
            priority=request.priority,
            names=(request.first_name, request.second_name),
        )
        data = [
            ScoreResponseData(index=i, score=float(out.outputs.data.reshape(-1)[0]))
            for i, out in enumerate(outputs)
        ]
        return ScoreResponse(model=model.name, data=data, usage=usage)

    async def rerank(self, request: RerankRequest, *, cohere_v2: bool = False) -> RerankResponse:
        model = self.resolve_model(request.model)
        documents = request.document_texts
        if not documents:
            raise OpenAIError("documents must not be empty.", 400, param="documents")
        outputs, usage = await self._scores(
            model,
            request.query,
            documents,
            activation=request.resolved_activation,
            truncate=request.truncate_prompt_tokens,
            request_id=request.request_id,
            priority=request.priority,
            names=("query", "documents"),
        )
        results = [
            RerankResult(
                index=i,
                document=RerankDocument(text=documents[i]) if request.return_documents else None,
                relevance_score=float(out.outputs.data.reshape(-1)[0]),
            )
            for i, out in enumerate(outputs)
        ]
        results.sort(key=lambda r: r.relevance_score, reverse=True)
        if request.top_n:
            results = results[: request.top_n]
        response_cls = RerankV2Response if cohere_v2 else RerankResponse
        return response_cls(
            model=model.name, usage=RerankUsage(total_tokens=usage.total_tokens), results=results
        )
