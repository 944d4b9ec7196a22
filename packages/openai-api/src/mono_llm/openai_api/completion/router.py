"""Thin HTTP layer of POST /v1/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from mono_llm.openai_api.completion.protocol import CompletionRequest, CompletionResponse
from mono_llm.openai_api.errors import ErrorResponse
from mono_llm.openai_api.server_state import server_state
from mono_llm.openai_api.streaming import EventStreamResponse, unless_disconnected

router = APIRouter(tags=["completions"])

ERROR_RESPONSES: dict[int | str, dict] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 500, 503)
}


@router.post(
    "/v1/completions",
    response_model=CompletionResponse,
    responses={**ERROR_RESPONSES, 200: {"content": {"text/event-stream": {}}}},
)
async def create_completion(request: CompletionRequest, raw_request: Request) -> Response:
    """Complete one or more prompts (OpenAI's legacy Completions API, with vLLM's extras)."""
    serving = server_state(raw_request).completion
    if request.stream:
        return EventStreamResponse(await serving.stream(request, raw_request))
    response = await unless_disconnected(raw_request, serving.complete(request, raw_request))
    if response is None:  # the client left; nobody reads this
        return Response(status_code=499)
    return JSONResponse(response.model_dump())
