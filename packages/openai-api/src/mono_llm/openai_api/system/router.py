"""Probes and operations: /health (liveness), /ready (readiness), /ping, /version, /metrics.

/health answers 503 once any engine loop has died, so an orchestrator restarts the process;
/ready answers 200 only after every model is loaded and warmed up, and 503 again while the
server drains on SIGTERM, so a load balancer stops sending new requests.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from mono_llm.openai_api._version import __version__
from mono_llm.openai_api.errors import OpenAIError, from_exception
from mono_llm.openai_api.server_state import server_state

router = APIRouter(tags=["system"])


async def _check_engines(raw_request: Request) -> None:
    for model in server_state(raw_request).registry:
        engine = model.engine
        if getattr(engine, "errored", False):
            raise OpenAIError(f"The engine of model {model.name!r} has stopped.", 503)
        await engine.check_health()


@router.get("/health")
async def health(raw_request: Request) -> Response:
    """200 while every engine runs; 503 once one has died."""
    try:
        await _check_engines(raw_request)
    except Exception as exc:  # EngineDeadError or anything a dead loop raises
        error = from_exception(exc)
        return OpenAIError(error.message, 503).to_json_response()
    return Response(status_code=200)


@router.get("/ping")
async def ping(raw_request: Request) -> Response:
    """Same as /health (the SageMaker-style probe vLLM also answers)."""
    return await health(raw_request)


@router.post("/ping")
async def ping_post(raw_request: Request) -> Response:
    """POST form of /ping."""
    return await health(raw_request)


@router.get("/ready")
async def ready(raw_request: Request) -> JSONResponse:
    """200 once the models are loaded and warmed up; 503 before that and while draining."""
    state = getattr(raw_request.app.state, "server", None)
    if state is None or not state.ready:
        return JSONResponse({"status": "starting"}, status_code=503)
    if state.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    if any(getattr(m.engine, "errored", False) for m in state.registry):
        return JSONResponse({"status": "engine dead"}, status_code=503)
    return JSONResponse({"status": "ready", "models": [m.name for m in state.registry]})


@router.get("/version")
async def version() -> JSONResponse:
    return JSONResponse({"version": __version__})


@router.get("/metrics")
async def metrics(raw_request: Request) -> Response:
    """Prometheus text format; every metric as both mono_llm:* and vllm:*."""
    body = server_state(raw_request).metrics.render()
    return Response(body, media_type=CONTENT_TYPE_LATEST)
