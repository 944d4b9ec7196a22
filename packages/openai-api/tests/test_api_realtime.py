"""/v1/realtime pieces without an engine: local agreement of partial decodes, the event
models of both protocols, and the API key on a WebSocket (header and subprotocol)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI, WebSocket
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from mono_llm.openai_api.audio.serving import Transcript
from mono_llm.openai_api.http_middleware import ApiKeyMiddleware
from mono_llm.openai_api.realtime import protocol as p
from mono_llm.openai_api.realtime.transcriber import Utterance, UtteranceTranscriber

pytest.importorskip("mono_llm.audio")


class ScriptedServing:
    """Stands in for AudioServing: each decode returns the next scripted text."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.decoded: list[int] = []

    def check_task(self, request: Any, model: Any, task: str) -> None:
        pass

    def prepare_samples(self, upload: Any, samples: np.ndarray, duration_s: float) -> Any:
        return samples.shape[0]

    async def transcribe(self, prepared: Any, task: str, *, timestamps: bool) -> Transcript:
        self.decoded.append(prepared)
        return Transcript(self.texts.pop(0), "en", prepared / 16000, [])


class FakeModel:
    name = "whisper"


def _speech(seconds: float) -> np.ndarray:
    return np.full(round(seconds * 16000), 0.1, dtype=np.float32)


def _run(texts: list[str], steps: list[float]) -> tuple[list[str], str, str, Utterance]:
    serving = ScriptedServing(texts)
    transcriber = UtteranceTranscriber(serving, FakeModel(), "en", "")  # type: ignore[arg-type]
    utterance = Utterance("item_1")

    async def go() -> tuple[list[str], str, str]:
        deltas = []
        for seconds in steps:
            utterance.add(_speech(seconds))
            deltas.append(await transcriber.partial(utterance))
        transcript, last = await transcriber.final(utterance)
        return deltas, last, transcript.text

    deltas, last, final = asyncio.run(go())
    return deltas, last, final, utterance


def test_partials_send_only_the_words_two_decodes_agree_on() -> None:
    deltas, last, final, utterance = _run(
        ["The", "The quick brown", "The quick brown fax", "The quick brown fox jumps over."],
        [1.0, 1.0, 1.0],
    )
    assert deltas == ["", "The", " quick brown"]
    assert last == " fox jumps over."
    assert "".join(deltas) + last == final == utterance.sent


def test_a_disagreeing_decode_sends_nothing_and_the_final_text_wins() -> None:
    deltas, last, final, _ = _run(
        ["Hello there", "Hello there friend", "Hello their friend", "Hollow, there."],
        [1.0, 1.0, 1.0],
    )
    assert deltas == ["", "Hello there", ""]
    # The final decode revised a sent word: no delta can take it back; the final text is kept.
    assert last == "" and final == "Hollow, there."


def test_short_audio_is_not_decoded_for_partials() -> None:
    serving = ScriptedServing(["unused"])
    transcriber = UtteranceTranscriber(serving, FakeModel(), None, "")  # type: ignore[arg-type]
    utterance = Utterance("item_1")
    utterance.add(_speech(0.3))
    assert asyncio.run(transcriber.partial(utterance)) == ""
    assert serving.decoded == []
    empty = Utterance("item_2")
    transcript, delta = asyncio.run(transcriber.final(empty))
    assert transcript.text == "" and delta == ""


def test_utterance_keeps_only_the_last_samples_on_request() -> None:
    utterance = Utterance("item_1")
    utterance.add(np.arange(10, dtype=np.float32))
    utterance.add(np.arange(10, 20, dtype=np.float32))
    utterance.keep_last(5)
    assert utterance.num_samples == 5 and utterance.start_sample == 15
    assert utterance.samples().tolist() == [15, 16, 17, 18, 19]


def test_openai_session_shapes() -> None:
    ga = p.GaSessionUpdate.model_validate(
        {
            "type": "session.update",
            "session": {
                "type": "transcription",
                "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}}},
            },
        }
    )
    assert ga.session.audio.input.turn_detection is not None  # server VAD by default
    beta = p.TranscriptionSessionUpdate.model_validate(
        {"type": "transcription_session.update", "session": {"turn_detection": None}}
    )
    assert beta.session.turn_detection is None
    assert p.TurnDetection().threshold_db() == -40.0
    with pytest.raises(ValueError):
        p.TurnDetection.model_validate({"type": "semantic_vad"})
    with pytest.raises(ValueError):
        p.AudioFormat.model_validate({"type": "audio/pcm", "rate": 8000})


def _ws_app() -> FastAPI:
    app = FastAPI()

    @app.websocket("/v1/realtime")
    async def echo(websocket: WebSocket) -> None:
        offered = websocket.scope.get("subprotocols") or []
        await websocket.accept(subprotocol="realtime" if "realtime" in offered else None)
        await websocket.send_text("hello")
        await websocket.close()

    app.add_middleware(ApiKeyMiddleware, api_keys=["sekrit"])
    return app


@pytest.mark.parametrize(
    "headers,subprotocols",
    [
        ({"Authorization": "Bearer sekrit"}, None),
        ({}, ["realtime", "openai-insecure-api-key.sekrit"]),
    ],
)
def test_websocket_key_as_header_or_subprotocol(headers: dict, subprotocols: Any) -> None:
    with TestClient(_ws_app()) as client:
        kwargs = {"subprotocols": subprotocols} if subprotocols else {}
        with client.websocket_connect("/v1/realtime", headers=headers, **kwargs) as ws:
            assert ws.receive_text() == "hello"


@pytest.mark.parametrize(
    "headers,subprotocols",
    [
        ({}, None),
        ({"Authorization": "Bearer nope"}, None),
        ({}, ["realtime", "openai-insecure-api-key.nope"]),
        ({"Authorization": "Basic sekrit"}, None),
    ],
)
def test_websocket_without_the_key_is_closed_with_1008(headers: dict, subprotocols: Any) -> None:
    with TestClient(_ws_app()) as client:
        kwargs = {"subprotocols": subprotocols} if subprotocols else {}
        with client.websocket_connect("/v1/realtime", headers=headers, **kwargs) as ws:
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_text()
            assert closed.value.code == 1008


def test_realtime_flags_must_be_positive() -> None:
    from mono_llm.openai_api.realtime.session import RealtimeLimits
    from mono_llm.openai_api.server_state import ServerArgs

    assert RealtimeLimits.from_args(ServerArgs()).partial_interval_s == 0.5
    with pytest.raises(ValueError, match="--max-realtime-buffer-s"):
        RealtimeLimits.from_args(ServerArgs(max_realtime_buffer_s=0))
    with pytest.raises(ValueError, match="--realtime-partial-interval-s"):
        RealtimeLimits.from_args(ServerArgs(realtime_partial_interval_s=-1))


def test_a_client_that_stops_reading_is_closed_not_buffered_for(monkeypatch: Any) -> None:
    from mono_llm.openai_api.realtime import session as session_module
    from mono_llm.openai_api.realtime.session import (
        CloseConnection,
        RealtimeLimits,
        RealtimeSession,
    )

    monkeypatch.setattr(session_module, "SEND_STALL_S", 0.05)

    async def go() -> CloseConnection:
        session = RealtimeSession(None, None, None, RealtimeLimits())  # type: ignore[arg-type]
        for _ in range(session_module.SEND_QUEUE_EVENTS):  # nobody drains the outbox
            await session._emit(p.TranscriptionDelta(delta="x"))
        with pytest.raises(CloseConnection) as closed:
            await session._emit(p.TranscriptionDelta(delta="one too many"))
        assert session.outbox.qsize() == session_module.SEND_QUEUE_EVENTS
        assert session._stalled
        return closed.value

    closed = asyncio.run(go())
    assert closed.code == 1008 and "not reading" in closed.reason
