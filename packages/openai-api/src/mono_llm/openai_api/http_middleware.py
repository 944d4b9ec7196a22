"""ASGI middlewares: API-key authentication and X-Request-Id.

Written as plain ASGI (not Starlette's BaseHTTPMiddleware) so streaming responses pass
through untouched and a client disconnect still reaches the route.
"""

from __future__ import annotations

import hmac
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mono_llm.openai_api.engine_requests import MAX_REQUEST_ID_CHARS
from mono_llm.openai_api.errors import OpenAIError

API_KEY_ENV_VARS = ("MONO_LLM_API_KEY", "VLLM_API_KEY")
# Routes that stay open with --api-key: probes, metrics and documentation.
OPEN_PATHS = frozenset(
    {"/health", "/ready", "/ping", "/version", "/metrics", "/docs", "/redoc", "/openapi.json",
     "/docs/oauth2-redirect", "/favicon.ico"}
)  # fmt: skip
OPEN_PREFIXES = ("/static/",)
WS_KEY_PROTOCOL = "openai-insecure-api-key."


def resolve_api_keys(
    given: Iterable[str] | None, environ: dict[str, str] | None = None
) -> list[str]:
    """The accepted keys: each --api-key (`@file` expands to one key per line), else the env."""
    keys: list[str] = []
    for value in given or ():
        if value.startswith("@"):
            lines = Path(value[1:]).expanduser().read_text().splitlines()
            keys.extend(line.strip() for line in lines if line.strip() and not line.startswith("#"))
        elif value:
            keys.append(value)
    if not keys:
        env = os.environ if environ is None else environ
        for name in API_KEY_ENV_VARS:
            if env.get(name):
                keys.append(env[name])
                break
    return keys


def _route_path(scope: Scope) -> str:
    path: str = scope.get("path", "")
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


class ApiKeyMiddleware:
    """401 with an OpenAI error unless `Authorization: Bearer <one of the keys>`."""

    def __init__(self, app: ASGIApp, api_keys: list[str]) -> None:
        self.app = app
        self.keys = [k.encode() for k in api_keys]

    def _authorized(self, scope: Scope) -> bool:
        headers = Headers(scope=scope)
        scheme, _, token = headers.get("authorization", "").partition(" ")
        candidates = [token.strip()] if scheme.lower() == "bearer" else []
        if "x-api-key" in headers:  # how the anthropic client sends its key
            candidates.append(headers["x-api-key"].strip())
        if scope["type"] == "websocket":
            # Browsers cannot set headers on a WebSocket: OpenAI's clients send the key as a
            # subprotocol, `openai-insecure-api-key.<key>`.
            for offered in headers.get("sec-websocket-protocol", "").split(","):
                offered = offered.strip()
                if offered.startswith(WS_KEY_PROTOCOL):
                    candidates.append(offered[len(WS_KEY_PROTOCOL) :])
        # Compare against every key in constant time so timing reveals nothing about keys.
        return any([hmac.compare_digest(c.encode(), key) for c in candidates for key in self.keys])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope.get("method") == "OPTIONS":
            await self.app(scope, receive, send)
            return
        path = _route_path(scope)
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES) or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        error = OpenAIError(
            "Invalid or missing API key: send `Authorization: Bearer <key>` "
            "(or `x-api-key: <key>`).",
            401,
            type="AuthenticationError",
        )
        response = error.to_json_response()
        if path.startswith("/v1/messages"):  # Anthropic's clients read Anthropic's shape
            from mono_llm.openai_api.messages.protocol import anthropic_error_response

            response = anthropic_error_response(error)
        if scope["type"] == "websocket":
            # Accept, then close with 1008 (policy) and a reason: a refused handshake would
            # only show the client an HTTP 403.
            await receive()  # websocket.connect
            await send({"type": "websocket.accept"})
            await send(
                {"type": "websocket.close", "code": 1008, "reason": "invalid or missing API key"}
            )
            return
        await response(scope, receive, send)


class RequestIdMiddleware:
    """Echo the client's X-Request-Id (or a new id) in the response's x-request-id header.

    A generated id is also written into the request's headers, so the response body's id
    and the engine request id are derived from the same value the client sees. A client's id
    longer than MAX_REQUEST_ID_CHARS is cut to that length (in the echo and everywhere else).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get("x-request-id")
        request_id = given[:MAX_REQUEST_ID_CHARS] if given else uuid.uuid4().hex
        if request_id != given:
            scope = dict(scope)
            headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"x-request-id"]
            scope["headers"] = [*headers, (b"x-request-id", request_id.encode("latin-1"))]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["x-request-id"] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)


class RootPathMiddleware:
    """--root-path: the prefix a proxy serves the app under (outermost, so every other
    middleware and the docs pages see it)."""

    def __init__(self, app: ASGIApp, root_path: str) -> None:
        self.app = app
        self.root_path = root_path.rstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not scope.get("root_path"):
            scope = {**scope, "root_path": self.root_path}
        await self.app(scope, receive, send)
