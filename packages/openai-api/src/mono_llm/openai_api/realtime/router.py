"""Thin WebSocket layer of /v1/realtime; registered only when a served model transcribes."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from mono_llm.openai_api.errors import OpenAIError
from mono_llm.openai_api.realtime.session import (
    CLOSE_TRY_AGAIN,
    RealtimeLimits,
    RealtimeSession,
)

router = APIRouter(tags=["realtime"])


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket) -> None:
    """Streaming transcription: see docs/http-api.md for the events of both protocols."""
    state = getattr(websocket.app.state, "server", None)
    if state is None or not state.ready or state.draining or state.audio is None:
        await websocket.close(CLOSE_TRY_AGAIN, "the server is not ready")
        return
    limits = RealtimeLimits.from_args(state.args)
    # OpenAI's clients name a model in the URL (?model=...); used when this server serves it.
    model = websocket.query_params.get("model")
    served = {name for m in state.registry for name in m.names}
    session = RealtimeSession(
        websocket,
        state.audio,
        state.registry,
        limits,
        intent=websocket.query_params.get("intent"),
        default_model=model if model in served else None,
    )
    await session.run()


@router.get("/v1/realtime", include_in_schema=False)
async def realtime_over_http() -> None:
    """A plain HTTP request learns that this is a WebSocket endpoint (not a 404)."""
    raise OpenAIError(
        "/v1/realtime is a WebSocket endpoint: connect with ws:// or wss://.",
        426,
        headers={"Upgrade": "websocket"},
    )
