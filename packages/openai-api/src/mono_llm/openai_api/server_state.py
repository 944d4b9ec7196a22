"""The server's settings (`ServerArgs`, the non-engine flags of `mono-llm serve`) and the
state one app holds: its models, metrics and the serving objects the routers call."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

if TYPE_CHECKING:
    from mono_llm.openai_api.audio.serving import AudioServing
    from mono_llm.openai_api.chat_completion.serving import ChatServing
    from mono_llm.openai_api.completion.serving import CompletionServing
    from mono_llm.openai_api.media import MediaInputs
    from mono_llm.openai_api.messages.serving import MessagesServing
    from mono_llm.openai_api.metrics import ServerMetrics
    from mono_llm.openai_api.responses.serving import ResponsesServing
    from mono_llm.openai_api.served_models import ServedModels
    from mono_llm.openai_api.tokenization.serving import TokenizationServing


@dataclass(slots=True)
class ServerArgs:
    """HTTP server settings; each field is a `mono-llm serve` flag (vLLM's name and default)."""

    host: str | None = None
    """Address to listen on; default: all interfaces (as vLLM)."""
    port: int = 8000
    """Port to listen on."""
    api_key: list[str] | None = None
    """Key clients must send as `Authorization: Bearer <key>` on every API route (health, ready, metrics and docs stay open). Repeat for several keys; `@path` reads one key per line from a file. Also read from $MONO_LLM_API_KEY or $VLLM_API_KEY."""
    chat_template: str | None = None
    """Chat template for every served model: a file path or the jinja text inline. Default: the tokenizer's own."""
    chat_template_content_format: str = "auto"
    """How message content reaches the template: string (flattened text), openai (list of parts), or auto (detected from the template)."""
    trust_request_chat_template: bool = False
    """Accept a `chat_template` in requests (chat completions, /tokenize, pooling). Off by default: a template is code; even trusted, it renders in a sandboxed worker process with a time and size limit."""
    enable_request_id_headers: bool = False
    """Send an `x-request-id` response header: the client's X-Request-Id or a generated id (the openai client reads it as `_request_id`)."""
    enable_offline_docs: bool = False
    """Serve /docs and /redoc with the Swagger UI and ReDoc assets shipped in the package, for air-gapped machines (no CDN)."""
    enable_auto_tool_choice: bool = False
    """Under tool_choice auto (the default with tools), read tool calls out of the reply with --tool-call-parser and return them as tool_calls."""
    tool_call_parser: str | None = None
    """Format of the model's tool calls: hermes, llama3_json, mistral, pythonic, qwen3_coder, deepseek_v3, or auto (chosen per model from its chat template)."""
    reasoning_parser: str | None = None
    """Split a reasoning model's `<think>...</think>` from its answer: deepseek_r1 (the reply starts inside the block) or qwen3 (the reply opens it). Chat replies then carry reasoning_content and reasoning; /v1/responses a reasoning item."""
    responses_store_max_entries: int = 1000
    """How many /v1/responses results (store=true, the default) the server keeps for previous_response_id, GET and background polling; the least recently used go first."""
    responses_store_ttl_s: float = 3600.0
    """Seconds a stored /v1/responses result is kept."""
    enable_prompt_tokens_details: bool = False
    """Report prefix-cache hits as usage.prompt_tokens_details.cached_tokens."""
    disable_fastapi_docs: bool = False
    """Serve no /docs, /redoc or /openapi.json at all."""
    allowed_origins: list[str] = field(default_factory=lambda: ["*"])
    """CORS: origins allowed to call the API from a browser."""
    allow_credentials: bool = False
    """CORS: allow cookies and Authorization headers on cross-origin requests."""
    allowed_methods: list[str] = field(default_factory=lambda: ["*"])
    """CORS: allowed HTTP methods."""
    allowed_headers: list[str] = field(default_factory=lambda: ["*"])
    """CORS: allowed request headers."""
    root_path: str | None = None
    """ASGI root_path, when a proxy serves the app under a path prefix."""
    ssl_keyfile: str | None = None
    """TLS private key file; with --ssl-certfile the server speaks HTTPS."""
    ssl_certfile: str | None = None
    """TLS certificate file."""
    ssl_ca_certs: str | None = None
    """CA certificates file (to verify client certificates)."""
    ssl_cert_reqs: int = 0
    """Whether client certificates are required (see Python's ssl module: 0 none, 1 optional, 2 required)."""
    uvicorn_log_level: str = "info"
    """Log level of uvicorn: critical, error, warning, info, debug, trace."""
    disable_uvicorn_access_log: bool = False
    """Do not log each HTTP request."""
    timeout_graceful_shutdown: int = 30
    """Seconds SIGTERM waits for in-flight requests to finish before stopping anyway."""
    max_request_body_bytes: int = 32 * 1024 * 1024
    """Largest request body accepted, in bytes; larger ones get 413, checked while the body is read (before any parsing)."""
    body_read_timeout: float = 60.0
    """Seconds a client has to send a request's whole body once its headers arrived; past it, 408 and the connection closes. 0: no limit."""
    header_read_timeout: float = 10.0
    """Seconds a connection has to send a request's complete headers (from its first byte, or from opening); past it the connection is closed. 0: no limit."""
    max_request_header_bytes: int = 65536
    """Largest request header block accepted, in bytes; past it, 431 and the connection closes."""
    timeout_keep_alive: int = 5
    """Seconds an idle keep-alive connection stays open between requests."""
    max_log_len: int | None = None
    """With --no-disable-log-requests: how many prompt tokens each request's log line shows (default: all)."""
    allowed_media_domains: list[str] | None = None
    """Hosts whose image URLs may resolve to private, loopback or link-local addresses (every other host must resolve to public addresses only)."""
    allowed_local_media_path: str | None = None
    """Folder under which `file://` image URLs may be read (default: none may)."""
    media_fetch_timeout: float = 30.0
    """Seconds one image fetch may take in all (connect, redirects and body)."""
    max_image_bytes: int = 20 * 1024 * 1024
    """Largest encoded image accepted (bytes), enforced while it downloads."""
    max_audio_file_size_mb: float = 25.0
    """Largest audio upload /v1/audio/transcriptions and /translations accept, in MB (larger: HTTP 413)."""
    max_audio_duration_s: float = 3600.0
    """Longest decoded audio those endpoints accept, in seconds."""
    max_realtime_buffer_s: float = 600.0
    """/v1/realtime: most seconds of uncommitted audio one session may buffer (more: an error event and close code 1009)."""
    max_realtime_session_s: float = 3600.0
    """/v1/realtime: longest a session may stay open, in seconds (then close code 1008)."""
    realtime_partial_interval_s: float = 0.5
    """/v1/realtime: seconds of new audio between two partial decodes (lower: earlier partial text, more decoding)."""


@dataclass(slots=True)
class ServerState:
    """What the routers reach through `request.app.state.server`."""

    args: ServerArgs
    registry: ServedModels
    metrics: ServerMetrics
    completion: CompletionServing
    chat: ChatServing
    tokenization: TokenizationServing
    media: MediaInputs | None = None
    audio: AudioServing | None = None  # only when a served model transcribes
    responses: ResponsesServing | None = None
    messages: MessagesServing | None = None
    ready: bool = False  # models loaded and warmed up
    draining: bool = False  # shutting down: not ready for new traffic
    inflight: int = 0  # API requests being served (probes excluded)
    # Queues of the streams being sent, so shutdown can end them with an error event.
    streams: set[asyncio.Queue[Any]] = field(default_factory=set)
    exit_code: int = 0  # 1 once an engine has died: the process should be restarted
    on_fatal: Callable[[], None] | None = None  # set by the host to stop serving (serve.py)


def server_state(request: Request) -> ServerState:
    state = getattr(request.app.state, "server", None)
    if state is None:
        from mono_llm.openai_api.errors import OpenAIError

        raise OpenAIError("The server is still starting: no model is loaded yet.", 503)
    return state
