"""Thin HTTP layer of POST /v1/chat/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from mono_llm.openai_api.chat_completion.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
)
from mono_llm.openai_api.completion.router import ERROR_RESPONSES
from mono_llm.openai_api.server_state import server_state
from mono_llm.openai_api.streaming import EventStreamResponse, unless_disconnected

router = APIRouter(tags=["chat"])


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletionResponse,
    responses={**ERROR_RESPONSES, 200: {"content": {"text/event-stream": {}}}},
)
async def create_chat_completion(request: ChatCompletionRequest, raw_request: Request) -> Response:
    """Answer a conversation, rendered with the model's chat template."""
    serving = server_state(raw_request).chat
    if request.stream:
        return EventStreamResponse(await serving.stream(request, raw_request))
    response = await unless_disconnected(raw_request, serving.complete(request, raw_request))
    if response is None:
        return Response(status_code=499)
    return JSONResponse(response.model_dump())
