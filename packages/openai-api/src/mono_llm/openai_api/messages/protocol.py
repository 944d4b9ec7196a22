"""Request model and error shape of the Anthropic Messages API (POST /v1/messages).

Content blocks are plain dicts (text, image, tool_use, tool_result, thinking), checked where
they are turned into chat messages; the request itself is a pydantic model so that bad
fields are 400s naming them. Errors are Anthropic-shaped:
`{"type": "error", "error": {"type": "invalid_request_error", "message": ...}}`.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import Field

from mono_llm.openai_api.errors import OpenAIError
from mono_llm.openai_api.protocol import OpenAIBaseModel

# Bounds on one request, so a body cannot make the server build an unbounded conversation.
MAX_MESSAGES = 1024
MAX_TOOLS = 128
MAX_STOP_SEQUENCES = 16


class AnthropicMessage(OpenAIBaseModel):
    role: str
    content: str | list[dict[str, Any]]


class MessagesRequest(OpenAIBaseModel):
    model: str | None = None
    max_tokens: int = Field(ge=1)
    messages: list[AnthropicMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    system: str | list[dict[str, Any]] | None = None
    stop_sequences: list[str] | None = Field(default=None, max_length=MAX_STOP_SEQUENCES)
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None


# Anthropic's error type for each status.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
}


def anthropic_error_body(error: OpenAIError) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(
        error.status, "invalid_request_error" if error.status < 500 else "api_error"
    )
    message = (
        f"{error.param}: {error.message}"
        if error.param and error.param not in error.message
        else error.message
    )
    return {"type": "error", "error": {"type": kind, "message": message}}


def anthropic_error_response(error: OpenAIError) -> JSONResponse:
    return JSONResponse(
        anthropic_error_body(error), status_code=error.status, headers=error.headers
    )
