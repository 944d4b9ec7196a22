"""`build_app`: the FastAPI application of the OpenAI-compatible server.

`mono-llm serve` is `build_app` + uvicorn; Ray Serve and other ASGI hosts call `build_app`
directly. Engines are created in the app's lifespan (startup), so importing or building the
app is cheap and a host that never starts it loads nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from mono_llm.core.config import AsyncEngineArgs, EngineArgs
from mono_llm.core.gc_heap import freeze_startup_heap
from mono_llm.core.models.registry import supports_transcription
from mono_llm.core.sampling_params import RequestOutputKind, SamplingParams
from mono_llm.openai_api._version import __version__
from mono_llm.openai_api.audio.router import router as audio_router
from mono_llm.openai_api.audio.serving import AudioServing, warm_up_transcription
from mono_llm.openai_api.chat_completion.router import router as chat_router
from mono_llm.openai_api.chat_completion.serving import ChatServing
from mono_llm.openai_api.chat_completion.tool_parsers import AUTO, get_tool_parser
from mono_llm.openai_api.chat_template import ChatTemplate, load_chat_template
from mono_llm.openai_api.completion.router import router as completion_router
from mono_llm.openai_api.completion.serving import CompletionServing
from mono_llm.openai_api.errors import install_error_handlers
from mono_llm.openai_api.http_middleware import (
    ApiKeyMiddleware,
    RequestIdMiddleware,
    RootPathMiddleware,
    resolve_api_keys,
)
from mono_llm.openai_api.media import MediaInputs
from mono_llm.openai_api.messages.router import router as messages_router
from mono_llm.openai_api.messages.serving import MessagesServing
from mono_llm.openai_api.metrics import ServerMetrics
from mono_llm.openai_api.models.router import router as models_router
from mono_llm.openai_api.pooling.router import router as pooling_router
from mono_llm.openai_api.pooling.serving import model_tasks, warm_up_pooling
from mono_llm.openai_api.realtime.router import router as realtime_router
from mono_llm.openai_api.realtime.session import RealtimeLimits
from mono_llm.openai_api.reasoning import get_reasoning_parser
from mono_llm.openai_api.request_guards import (
    BodyLimitsMiddleware,
    InternalErrorMiddleware,
    JsonTextMiddleware,
)
from mono_llm.openai_api.responses.router import router as responses_router
from mono_llm.openai_api.responses.serving import ResponsesServing
from mono_llm.openai_api.responses.store import ResponseStore
from mono_llm.openai_api.served_models import ServedModel, ServedModels
from mono_llm.openai_api.server_state import ServerArgs, ServerState
from mono_llm.openai_api.shutdown import DrainingMiddleware, watch_engines
from mono_llm.openai_api.system.offline_docs import install_offline_docs
from mono_llm.openai_api.system.router import router as system_router
from mono_llm.openai_api.template_pool import TemplatePool
from mono_llm.openai_api.tokenization.router import router as tokenization_router
from mono_llm.openai_api.tokenization.serving import TokenizationServing

if TYPE_CHECKING:
    from mono_llm.core.async_llm import AsyncLLM

logger = logging.getLogger("mono_llm.openai_api")


def _as_list(engines: Any) -> list[Any]:
    if isinstance(engines, (list, tuple)):
        return list(engines)
    return [engines]


def _start_engine(spec: Any) -> tuple[AsyncLLM, bool]:
    """(engine, owned): an AsyncLLM built from args (owned: we shut it down) or given."""
    from mono_llm.core.async_llm import AsyncLLM
    from mono_llm.openai_api.data_parallel import DataParallelRouter

    if isinstance(spec, AsyncLLM | DataParallelRouter):
        return spec, False  # type: ignore[return-value]
    if isinstance(spec, EngineArgs) and not isinstance(spec, AsyncEngineArgs):
        values = {name: getattr(spec, name) for name in spec.__dataclass_fields__}
        spec = AsyncEngineArgs(**values)
    if not isinstance(spec, AsyncEngineArgs):
        raise TypeError(f"build_app takes EngineArgs or AsyncLLM objects, got {type(spec)!r}")
    if spec.data_parallel_size > 1:
        return DataParallelRouter.from_engine_args(spec), True  # type: ignore[return-value]
    return AsyncLLM.from_engine_args(spec), True


def _served_model(
    engine: AsyncLLM, aliases: list[str], args: ServerArgs, pool: TemplatePool
) -> ServedModel:
    config = engine.model_config
    names = [config.served_model_name, *[a for a in aliases if a != config.served_model_name]]
    template = ChatTemplate.for_tokenizer(
        engine.tokenizer,
        load_chat_template(args.chat_template),
        args.chat_template_content_format,
    )
    template.pool = pool
    template.trust_request_template = args.trust_request_chat_template
    defaults = dict(engine.get_default_sampling_params() or {})
    if defaults:
        logger.info(
            "model %s: default sampling parameters from its generation config: %s "
            "(requests that set these fields override them)",
            names[0],
            defaults,
        )
    logger.info(
        "model %s: chat template %s, content format %s",
        names[0],
        "from --chat-template"
        if template.template
        else "from the tokenizer"
        if template.tokenizer_has_template
        else "missing (chat requests will be refused)",
        template.content_format,
    )
    return ServedModel(
        engine=engine,
        names=names,
        chat_template=template,
        root=config.model,
        max_model_len=config.max_model_len,
        default_sampling=defaults,
    )


def _architectures(spec: Any) -> list[str]:
    """config.json architectures of an engine spec, without starting it (for routing)."""
    config = getattr(spec, "model_config", None)
    if config is not None:
        return list(config.architectures)
    path = Path(str(getattr(spec, "model", "") or "")).expanduser() / "config.json"
    try:
        return list(json.loads(path.read_text()).get("architectures") or [])
    except (OSError, ValueError, AttributeError):
        return []  # create_engine_config reports the problem at startup


async def _warm_up(model: ServedModel) -> None:
    """One single-token generation, so the first client does not pay for lazy setup."""
    if supports_transcription(model.engine.model_config.architectures):
        await warm_up_transcription(model)
        return
    if model_tasks(model) is not None:  # a pooling model (embed / classify) cannot generate
        await warm_up_pooling(model)
        return
    params = SamplingParams(max_tokens=1, temperature=0.0, output_kind=RequestOutputKind.FINAL_ONLY)
    request_id = f"warmup-{uuid.uuid4().hex[:8]}"
    token_ids = model.tokenizer("warm up").input_ids or [0]
    async for _ in model.engine.generate({"prompt_token_ids": list(token_ids)}, params, request_id):
        pass


def build_app(
    engines: Any,
    server_args: ServerArgs | None = None,
    *,
    served_model_aliases: Sequence[Sequence[str]] | None = None,
) -> FastAPI:
    """The OpenAI-compatible app serving one or more models.

    `engines`: one or a list of `EngineArgs`/`AsyncEngineArgs` (engines are built at startup
    and shut down with the app) or already running `AsyncLLM`s (left running). Requests pick
    a model by its served name; `served_model_aliases[i]` adds names for model i.
    """
    args = server_args or ServerArgs()
    tool_parser: Any = None
    if args.enable_auto_tool_choice:
        if not args.tool_call_parser:
            raise ValueError("--enable-auto-tool-choice needs --tool-call-parser.")
        tool_parser = (
            AUTO if args.tool_call_parser == AUTO else get_tool_parser(args.tool_call_parser)
        )
    reasoning_parser = (
        get_reasoning_parser(args.reasoning_parser) if args.reasoning_parser else None
    )
    response_store = ResponseStore(args.responses_store_max_entries, args.responses_store_ttl_s)
    specs = _as_list(engines)
    if not specs:
        raise ValueError("build_app needs at least one model.")
    aliases = [list(a) for a in (served_model_aliases or [])]
    # Audio routes exist only when a served model transcribes (decided from config.json).
    serves_audio = any(supports_transcription(_architectures(spec)) for spec in specs)
    if serves_audio:
        RealtimeLimits.from_args(args)  # bad --max-realtime-* flags fail here, not per session

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned: list[AsyncLLM] = []
        models: list[ServedModel] = []
        pool = TemplatePool()
        try:
            await asyncio.to_thread(pool.start)
            for i, spec in enumerate(specs):
                engine, is_owned = _start_engine(spec)
                if is_owned:
                    owned.append(engine)
                model = _served_model(engine, aliases[i] if i < len(aliases) else [], args, pool)
                # --disable-log-requests (AsyncEngineArgs) decides per model; given engines
                # and plain EngineArgs do not log requests.
                model.log_requests = not getattr(spec, "disable_log_requests", True)
                model.max_log_len = args.max_log_len
                models.append(model)
            registry = ServedModels(models)
            metrics = ServerMetrics(lambda: [(m.name, m.engine) for m in registry])
            media = MediaInputs(args)
            chat = ChatServing(
                registry,
                metrics,
                prompt_tokens_details=args.enable_prompt_tokens_details,
                tool_parser=tool_parser,
                media=media,
                reasoning_parser=reasoning_parser,
            )
            state = ServerState(
                args=args,
                registry=registry,
                metrics=metrics,
                completion=CompletionServing(
                    registry, metrics, prompt_tokens_details=args.enable_prompt_tokens_details
                ),
                chat=chat,
                tokenization=TokenizationServing(registry, media),
                media=media,
                audio=AudioServing(
                    registry,
                    max_file_bytes=int(args.max_audio_file_size_mb * 1024**2),
                    max_duration_s=args.max_audio_duration_s,
                )
                if serves_audio
                else None,
                responses=ResponsesServing(chat, response_store),
                messages=MessagesServing(chat),
            )
            app.state.server = state
            for model in models:
                await _warm_up(model)
            freeze_startup_heap()  # keep full collections short while serving
            state.ready = True
            logger.info("serving %s", ", ".join(m.name for m in models))
            watchdog = asyncio.create_task(watch_engines(state))
            try:
                yield
            finally:
                watchdog.cancel()
            state.draining = True
        finally:
            pool.close()
            for engine in owned:
                with contextlib.suppress(Exception):
                    result = engine.shutdown()
                    if asyncio.iscoroutine(result):
                        await result

    offline = args.enable_offline_docs and not args.disable_fastapi_docs
    app = FastAPI(
        title="mono-llm OpenAI-compatible API",
        version=__version__,
        lifespan=lifespan,
        docs_url=None if (offline or args.disable_fastapi_docs) else "/docs",
        redoc_url=None if (offline or args.disable_fastapi_docs) else "/redoc",
        openapi_url=None if args.disable_fastapi_docs else "/openapi.json",
    )
    install_error_handlers(app)
    # Innermost first: unexpected exceptions become 500 JSON without dropping the
    # connection; lone surrogates in JSON bodies are refused (after the API key check).
    app.add_middleware(InternalErrorMiddleware)
    app.add_middleware(JsonTextMiddleware)
    app.add_middleware(
        BodyLimitsMiddleware,
        max_body_bytes=args.max_request_body_bytes,
        read_timeout=args.body_read_timeout,
    )
    for router in (
        system_router,
        models_router,
        completion_router,
        chat_router,
        responses_router,
        messages_router,
        tokenization_router,
        pooling_router,
    ):
        app.include_router(router)
    if serves_audio:
        app.include_router(audio_router)
        app.include_router(realtime_router)
    if offline:
        install_offline_docs(app)

    # Middlewares wrap in reverse order of addition: CORS is outermost, so even a 401
    # carries the CORS headers a browser needs to read it.
    keys = resolve_api_keys(args.api_key)
    # Inside the API key check: while draining, only authorized clients learn about it.
    app.add_middleware(DrainingMiddleware)
    if keys:
        app.add_middleware(ApiKeyMiddleware, api_keys=keys)
    if args.enable_request_id_headers:
        app.add_middleware(RequestIdMiddleware)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=args.allowed_origins,
        allow_credentials=args.allow_credentials,
        allow_methods=args.allowed_methods,
        allow_headers=args.allowed_headers,
    )
    if args.root_path:
        app.add_middleware(RootPathMiddleware, root_path=args.root_path)
    return app
