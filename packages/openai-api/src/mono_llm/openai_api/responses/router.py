"""Thin HTTP layer of the Responses API: create, retrieve, list input items, delete, cancel."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from mono_llm.openai_api.completion.router import ERROR_RESPONSES
from mono_llm.openai_api.errors import OpenAIError
from mono_llm.openai_api.responses.protocol import ResponsesRequest
from mono_llm.openai_api.responses.serving import ResponsesServing
from mono_llm.openai_api.server_state import server_state
from mono_llm.openai_api.streaming import EventStreamResponse, unless_disconnected

router = APIRouter(tags=["responses"])


def _serving(raw_request: Request) -> ResponsesServing:
    serving = server_state(raw_request).responses
    if serving is None:
        raise OpenAIError("The Responses API is not enabled on this server.", 404)
    return serving


@router.post(
    "/v1/responses",
    responses={**ERROR_RESPONSES, 200: {"content": {"text/event-stream": {}}}},
)
async def create_response(request: ResponsesRequest, raw_request: Request) -> Response:
    """Generate a model response (OpenAI's Responses API)."""
    serving = _serving(raw_request)
    if request.stream:
        events = await serving.create(request, raw_request)
        assert not isinstance(events, dict)
        return EventStreamResponse(events)
    response = await unless_disconnected(raw_request, serving.create(request, raw_request))
    if response is None:
        return Response(status_code=499)
    return JSONResponse(response)


@router.get("/v1/responses/{response_id}", responses=ERROR_RESPONSES)
async def retrieve_response(response_id: str, raw_request: Request) -> Response:
    """A stored response (poll a background one until its status is final)."""
    return JSONResponse(_serving(raw_request).retrieve(response_id))


@router.delete("/v1/responses/{response_id}", responses=ERROR_RESPONSES)
async def delete_response(response_id: str, raw_request: Request) -> Response:
    """Forget a stored response (a running background one is cancelled first)."""
    return JSONResponse(await _serving(raw_request).delete(response_id))


@router.post("/v1/responses/{response_id}/cancel", responses=ERROR_RESPONSES)
async def cancel_response(response_id: str, raw_request: Request) -> Response:
    """Stop a background response; its status becomes `cancelled`."""
    return JSONResponse(await _serving(raw_request).cancel(response_id))


@router.get("/v1/responses/{response_id}/input_items", responses=ERROR_RESPONSES)
async def list_input_items(
    response_id: str,
    raw_request: Request,
    limit: int = Query(default=20, ge=1, le=100),
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> Response:
    """The input items of a stored response, newest first unless order=asc."""
    serving = _serving(raw_request)
    return JSONResponse(serving.input_items(response_id, limit=limit, order=order, after=after))
