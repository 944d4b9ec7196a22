"""Thin HTTP layer of the pooling endpoints.

They are registered whatever the served models are: a request to a model that cannot serve
the task gets a 400 naming what that model does serve, which tells a client more than a
404 would (and several models with different tasks share one process).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from mono_llm.openai_api.errors import ErrorResponse
from mono_llm.openai_api.pooling.protocol import (
    ClassificationRequest,
    ClassificationResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    PoolingRequest,
    PoolingResponse,
    RerankRequest,
    RerankResponse,
    RerankV2Response,
    ScoreRequest,
    ScoreResponse,
)
from mono_llm.openai_api.pooling.serving import PoolingServing
from mono_llm.openai_api.server_state import server_state
from mono_llm.openai_api.streaming import unless_disconnected

router = APIRouter(tags=["pooling"])

ERROR_RESPONSES: dict[int | str, dict] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 500, 503)
}


def _serving(raw_request: Request) -> PoolingServing:
    state = server_state(raw_request)
    return PoolingServing(state.registry, state.metrics)  # stateless: cheap per request


async def _respond(raw_request: Request, work: Awaitable[Any]) -> Response:
    response = await unless_disconnected(raw_request, work)
    if response is None:  # the client left; nobody reads this
        return Response(status_code=499)
    return JSONResponse(response.model_dump(mode="json"))


@router.post("/v1/embeddings", response_model=EmbeddingResponse, responses=ERROR_RESPONSES)
async def create_embedding(request: EmbeddingRequest, raw_request: Request) -> Response:
    """Embed text or token ids (OpenAI's Embeddings API; float or base64 vectors)."""
    return await _respond(raw_request, _serving(raw_request).embeddings(request))


@router.post("/pooling", response_model=PoolingResponse, responses=ERROR_RESPONSES)
async def create_pooling(request: PoolingRequest, raw_request: Request) -> Response:
    """The model's raw pooled output for each input (vLLM's /pooling)."""
    return await _respond(raw_request, _serving(raw_request).pooling(request))


@router.post("/classify", response_model=ClassificationResponse, responses=ERROR_RESPONSES)
async def create_classify(request: ClassificationRequest, raw_request: Request) -> Response:
    """Class probabilities and the most likely label (from the model's id2label)."""
    return await _respond(raw_request, _serving(raw_request).classify(request))


@router.post("/score", response_model=ScoreResponse, responses=ERROR_RESPONSES)
@router.post("/v1/score", response_model=ScoreResponse, responses=ERROR_RESPONSES)
async def create_score(request: ScoreRequest, raw_request: Request) -> Response:
    """Relevance of text pairs (1:1, 1:N, N:N): cross-encoder scores or embedding cosine."""
    return await _respond(raw_request, _serving(raw_request).score(request))


@router.post("/rerank", response_model=RerankResponse, responses=ERROR_RESPONSES)
@router.post("/v1/rerank", response_model=RerankResponse, responses=ERROR_RESPONSES)
async def create_rerank(request: RerankRequest, raw_request: Request) -> Response:
    """Documents sorted by relevance to the query (Jina's API shape)."""
    return await _respond(raw_request, _serving(raw_request).rerank(request))


@router.post("/v2/rerank", response_model=RerankV2Response, responses=ERROR_RESPONSES)
async def create_rerank_v2(request: RerankRequest, raw_request: Request) -> Response:
    """Documents sorted by relevance to the query (Cohere's v2 API shape)."""
    return await _respond(raw_request, _serving(raw_request).rerank(request, cohere_v2=True))
