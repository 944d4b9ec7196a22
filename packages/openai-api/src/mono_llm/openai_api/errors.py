"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` with the right status.

Every failure a client can see goes through here, so no route ever answers with a stack trace
or FastAPI's `{"detail": ...}`. Engine exceptions (mono_llm.core.errors) carry the offending
parameter, which becomes `param` without parsing messages.
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from mono_llm.core.errors import (
    EngineDeadError,
    EngineError,
    EngineOverloadedError,
    InvalidRequestError,
    UnsupportedModelError,
)

logger = logging.getLogger(__name__)

# Seconds a client told "overloaded" should wait before retrying (Retry-After header).
OVERLOAD_RETRY_AFTER_S = 1


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int | str | None = None


class ErrorResponse(BaseModel):
    """The body of every error response (the OpenAI API's shape)."""

    error: ErrorInfo


# OpenAI's error `type` for each status it documents; anything else maps to a generic name.
_TYPE_BY_STATUS = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    413: "BadRequestError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    500: "InternalServerError",
    501: "NotImplementedError",
    503: "ServiceUnavailableError",
}


class OpenAIError(Exception):
    """An error to answer with, raised anywhere in a route."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        *,
        param: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.type = type or _TYPE_BY_STATUS.get(status, HTTPStatus(status).phrase.replace(" ", ""))
        self.headers = headers

    def to_response(self) -> ErrorResponse:
        return ErrorResponse(
            error=ErrorInfo(
                message=self.message, type=self.type, param=self.param, code=self.status
            )
        )

    def to_json_response(self) -> JSONResponse:
        return JSONResponse(
            self.to_response().model_dump(), status_code=self.status, headers=self.headers
        )


def from_exception(exc: BaseException) -> OpenAIError:
    """The OpenAI error for any exception raised while serving a request."""
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, InvalidRequestError):
        return OpenAIError(exc.message, 400, param=exc.param)
    if isinstance(exc, EngineOverloadedError):
        return OpenAIError(
            str(exc) or "The server is overloaded; retry later.",
            503,
            headers={"Retry-After": str(OVERLOAD_RETRY_AFTER_S)},
        )
    if isinstance(exc, EngineDeadError):
        return OpenAIError(str(exc) or "The engine has stopped.", 503)
    if isinstance(exc, EngineError):
        # The engine failed this request (and logged why): a 500 with its message only.
        return OpenAIError(_scrub(str(exc)) or "The engine failed this request.", 500)
    if isinstance(exc, (UnsupportedModelError, NotImplementedError)):
        return OpenAIError(str(exc), 400)
    if isinstance(exc, RecursionError):
        # Input nested past Python's recursion limit (JSON values, template data).
        return OpenAIError("The request is nested too deeply to process.", 400)
    if isinstance(exc, ValueError):
        # Validation errors raised by tokenizers and pydantic on user input (vLLM: 400 too).
        return OpenAIError(str(exc), 400)
    logger.exception("internal error while serving a request", exc_info=exc)
    return OpenAIError(f"Internal server error: {type(exc).__name__}: {_scrub(str(exc))}", 500)


# Source file paths (".../site-packages/x/y.py", "model.py:12") in a server error's message
# say how the server is laid out; the client gets the message without them (the log keeps
# everything).
_SOURCE_PATH = re.compile(r"(?:[\w.~-]*[/\\])*[\w.-]+\.py[cd]?\b(?::\d+)?")


def _scrub(message: str) -> str:
    return _SOURCE_PATH.sub("<source>", message)


# pydantic-core's tags for union members in an error location: type names, possibly
# parametrised ("list[int]", "dict[str,any]", "function-after[...]"), or a model class name.
_UNION_TAG = re.compile(
    r"^(str|int|float|bool|bytes|none|list|dict|tuple|set|literal|union|tagged-union|"
    r"function-[a-z]+|json-or-python|lax-or-strict|nullable|is-instance|chain)(\[.*\])?$"
    r"|^[A-Z][A-Za-z0-9]*(\[.*\])?$"
)


def validation_error_to_openai(exc: RequestValidationError) -> OpenAIError:
    """A pydantic validation failure as a 400 naming the field (vLLM answers 400, not 422)."""
    errors = exc.errors()
    for error in errors:
        if error.get("type") == "json_invalid":
            # loc is ("body", <character offset>): say what is wrong, not "1: JSON decode error".
            loc = error.get("loc", ())
            where = f" at character {loc[-1]}" if len(loc) > 1 else ""
            reason = (error.get("ctx") or {}).get("error", "malformed JSON")
            return OpenAIError(
                f"The request body is not valid JSON{where}: {reason}.", 400, param="body"
            )
    parts = []
    first_param: str | None = None
    for error in errors:
        loc = [str(p) for p in error.get("loc", ()) if p != "body"]
        name = ".".join(loc) or "body"
        # `param` names the request's field: drop the union-member tags pydantic puts in the
        # location ("prompt.list[int].0" -> "prompt.0", "stop.str" -> "stop").
        field_loc = [p for p in loc if not _UNION_TAG.match(p)]
        first_param = first_param or ".".join(field_loc) or "body"
        parts.append(f"{name}: {error.get('msg', 'invalid value')}")
    count = len(errors)
    message = f"{count} validation error{'s' if count != 1 else ''} in the request: " + "; ".join(
        parts
    )
    return OpenAIError(message, 400, param=first_param)


# OpenAI API families this server does not serve (yet): a client calling one learns that
# the route is unsupported, not merely "Not Found".
_UNSERVED_OPENAI_ROUTES = {
    "/v1/audio": "the audio API",
    "/v1/realtime": "the Realtime API",
    "/v1/images": "the images API",
    "/v1/files": "the files API",
    "/v1/batches": "the batch API",
    "/v1/fine_tuning": "the fine-tuning API",
    "/v1/moderations": "the moderations API",
    "/v1/assistants": "the Assistants API",
    "/v1/threads": "the Assistants API",
    "/v1/vector_stores": "the vector stores API",
    "/v1/uploads": "the uploads API",
    "/v1/conversations": "the conversations API",
    "/v1/videos": "the videos API",
}


def routing_error_message(method: str, path: str, status: int) -> str | None:
    """A message naming the route for a request no route matched (404) or whose method the
    route does not take (405); None for other statuses (their detail is kept)."""
    if status == 405:
        return f"Method {method} is not allowed on {path}."
    if status != 404:
        return None
    for prefix, family in _UNSERVED_OPENAI_ROUTES.items():
        if path == prefix or path.startswith(prefix + "/"):
            return f"{method} {path}: {family} is not supported by this server."
    return f"{method} {path} is not a route of this server."


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception type to an OpenAI-shaped JSON body."""

    async def openai_error(_: Request, exc: Exception) -> JSONResponse:
        return from_exception(exc).to_json_response()

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return validation_error_to_openai(exc).to_json_response()

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        headers: dict[str, Any] | None = getattr(exc, "headers", None)
        message = None
        if exc.detail in ("Not Found", "Method Not Allowed"):  # raised by routing itself
            message = routing_error_message(request.method, request.url.path, exc.status_code)
        return OpenAIError(
            message or str(exc.detail), exc.status_code, headers=headers
        ).to_json_response()

    app.add_exception_handler(OpenAIError, openai_error)
    app.add_exception_handler(InvalidRequestError, openai_error)
    app.add_exception_handler(EngineError, openai_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, openai_error)
