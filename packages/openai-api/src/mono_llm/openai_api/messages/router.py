"""Thin HTTP layer of POST /v1/messages (Anthropic's Messages API).

The body is validated here rather than by FastAPI, so that every error, malformed JSON and
bad fields included, comes back Anthropic-shaped (the `anthropic` client reads that shape).
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from mono_llm.openai_api.errors import OpenAIError, from_exception
from mono_llm.openai_api.messages.protocol import MessagesRequest, anthropic_error_response
from mono_llm.openai_api.server_state import server_state
from mono_llm.openai_api.streaming import EventStreamResponse, unless_disconnected

router = APIRouter(tags=["messages"])


def _validation_error(exc: ValidationError) -> OpenAIError:
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first.get("loc", ())) or "body"
    return OpenAIError(f"{param}: {first.get('msg', 'invalid value')}", 400, param=param)


@router.post("/v1/messages")
async def create_message(raw_request: Request) -> Response:
    """Answer a conversation (Anthropic's Messages API, as vLLM serves it)."""
    try:
        try:
            body = json.loads(await raw_request.body())
        except ValueError as exc:
            raise OpenAIError(f"The request body is not valid JSON: {exc}", 400) from exc
        if not isinstance(body, dict):
            raise OpenAIError("The request body must be a JSON object.", 400)
        try:
            request = MessagesRequest.model_validate(body)
        except ValidationError as exc:
            raise _validation_error(exc) from None
        serving = server_state(raw_request).messages
        if serving is None:
            raise OpenAIError("The Messages API is not enabled on this server.", 404)
        if request.stream:
            events = await serving.create(request, raw_request)
            assert not isinstance(events, dict)
            return EventStreamResponse(events)
        message = await unless_disconnected(raw_request, serving.create(request, raw_request))
    except Exception as exc:
        return anthropic_error_response(from_exception(exc))
    if message is None:
        return Response(status_code=499)
    return JSONResponse(message)
