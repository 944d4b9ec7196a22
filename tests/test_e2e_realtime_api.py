"""/v1/realtime end to end: a real uvicorn server on the converted whisper tiny.en, real
`websockets` clients speaking vLLM's and OpenAI's realtime protocols, an espeak-ng clip
streamed in 100 ms frames; the final text is compared with /v1/audio/transcriptions on the
same audio. Bad events, bad keys and an oversized buffer each give an error event or a close
code, and the server stays healthy."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

audio = pytest.importorskip("mono_llm.audio")
soundfile = pytest.importorskip("soundfile")
websockets = pytest.importorskip("websockets")
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

MODEL = "whisper-tiny-en"
KEY = "realtime-key"
TEXT = (
    "The quick brown fox jumps over the lazy dog. Then it runs back into the forest, "
    "where a small bird sings in the tall green tree. The dog wakes up and barks at the "
    "moon, and everyone in the village hears it."
)
FRAME_S = 0.1


def _model_folder() -> Path:
    try:
        from mono_llm.core.testing import whisper_checkpoint_path
    except ImportError:  # a core without the Whisper fixtures: a converted copy in the cache
        from mono_llm.core.config import default_cache_dir

        folder = default_cache_dir() / "fixtures" / "whisper-tiny.en-v1"
        if not (folder / "config.json").is_file():
            pytest.skip("the converted whisper tiny.en fixture is not available")
        return folder
    try:
        return Path(whisper_checkpoint_path("tiny.en"))
    except ModuleNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """The spoken sentence as 16 kHz PCM16 (int16) samples."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    out = tmp_path_factory.mktemp("speech") / "clip.wav"
    subprocess.run(["espeak-ng", "-w", str(out), TEXT], check=True)
    samples = audio.decode_audio(out.read_bytes(), sampling_rate=16000).samples
    return np.clip(np.round(samples * 32768.0), -32768, 32767).astype(np.int16)


def _wav(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _at_24k(clip: np.ndarray) -> np.ndarray:
    resampled = audio.resample(clip.astype(np.float32) / 32768.0, 16000, 24000)
    return np.clip(np.round(resampled * 32768.0), -32768, 32767).astype(np.int16)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, server_factory: Any) -> Iterator[Any]:
    from mono_llm.core.config import AsyncEngineArgs
    from mono_llm.openai_api import build_app
    from mono_llm.openai_api.server_state import ServerArgs

    folder = _model_folder()
    app = build_app(
        AsyncEngineArgs(model=str(folder), served_model_name=MODEL, dtype="float32"),
        ServerArgs(api_key=[KEY], max_realtime_buffer_s=30.0),
    )
    with server_factory(app, api_key=KEY) as running:
        deadline = time.monotonic() + 300
        while httpx.get(f"{running.base_url}/ready").status_code != 200:
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.2)
        yield running


def _offline(server: Any, wav: bytes) -> str:
    response = httpx.post(
        f"{server.v1}/audio/transcriptions",
        files={"file": ("clip.wav", wav, "audio/wav")},
        data={"model": MODEL},
        headers=server.headers(),
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return response.json()["text"]


def _url(server: Any, query: str = "") -> str:
    return server.base_url.replace("http://", "ws://") + "/v1/realtime" + query


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def _frames(samples: np.ndarray, rate: int) -> list[str]:
    step = round(FRAME_S * rate)
    return [
        base64.b64encode(samples[i : i + step].tobytes()).decode()
        for i in range(0, samples.shape[0], step)
    ]


async def _stream(ws: Any, frames: list[str], *, realtime: bool) -> float:
    """Send the frames (at real-time pace when asked); return when the last one went."""
    for frame in frames:
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": frame}))
        if realtime:
            await asyncio.sleep(FRAME_S)
    return time.monotonic()


async def _until(ws: Any, kind: str, log: list[tuple[float, dict]], timeout: float = 120) -> dict:
    async with asyncio.timeout(timeout):
        while True:
            event = json.loads(await ws.recv())
            log.append((time.monotonic(), event))
            assert event["type"] != "error", event
            if event["type"] == kind:
                return event


def _check_deltas(joined: str, final: str) -> None:
    """The deltas concatenate to the final text, unless the final decode (the whole
    utterance, as the file endpoint decodes it) revised a word already sent as partial text:
    Whisper hears the start of a clip differently once it sees the rest (tiny.en on this
    clip: "brown fox jump" in the first seconds, "roundfoc stump" over all of it). Then no
    completing delta can exist and the final text is the one to keep; a concatenation that
    is a strict prefix of the final text would be a missing delta."""
    assert joined, "no delta at all"
    assert joined.split()[0] == final.split()[0]
    assert joined == final or not final.startswith(joined), (joined, final)


def test_vllm_protocol_streams_deltas_before_the_end(server: Any, clip: np.ndarray) -> None:
    expected = _offline(server, _wav(clip, 16000))
    assert "lazy dog" in expected.lower()

    async def session() -> tuple[float, list[tuple[float, dict]]]:
        log: list[tuple[float, dict]] = []
        async with connect(_url(server), additional_headers=_auth()) as ws:
            created = json.loads(await ws.recv())
            assert created["type"] == "session.created" and created["id"].startswith("sess-")
            await ws.send(json.dumps({"type": "session.update", "model": MODEL}))
            await ws.send(json.dumps({"type": "input_audio_buffer.commit", "final": False}))
            receiver = asyncio.create_task(_until(ws, "transcription.done", log))
            ended = await _stream(ws, _frames(clip, 16000), realtime=True)
            await ws.send(json.dumps({"type": "input_audio_buffer.commit", "final": True}))
            await receiver
        return ended, log

    ended, log = asyncio.run(session())
    deltas = [(t, e["delta"]) for t, e in log if e["type"] == "transcription.delta"]
    done = log[-1][1]
    assert done["type"] == "transcription.done"
    assert done["text"] == expected
    _check_deltas("".join(d for _, d in deltas), done["text"])
    assert any(t < ended for t, _ in deltas), "no partial text arrived before the audio ended"
    usage = done["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_openai_protocol_manual_commit_at_24khz(server: Any, clip: np.ndarray) -> None:
    clip24 = _at_24k(clip)
    expected = _offline(server, _wav(clip24, 24000))

    async def session() -> tuple[float, list[tuple[float, dict]]]:
        log: list[tuple[float, dict]] = []
        url = _url(server, "?intent=transcription")
        async with connect(url, additional_headers=_auth()) as ws:
            created = json.loads(await ws.recv())
            assert created["type"] == "transcription_session.created"
            assert created["session"]["turn_detection"]["type"] == "server_vad"
            update = {
                "type": "transcription_session.update",
                "session": {
                    "input_audio_format": "pcm16",
                    "input_audio_transcription": {"model": MODEL, "language": "en"},
                    "turn_detection": None,
                },
            }
            await ws.send(json.dumps(update))
            updated = await _until(ws, "transcription_session.updated", log)
            assert updated["session"]["turn_detection"] is None
            receiver = asyncio.create_task(
                _until(ws, "conversation.item.input_audio_transcription.completed", log)
            )
            ended = await _stream(ws, _frames(clip24, 24000), realtime=True)
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            await receiver
        return ended, log

    ended, log = asyncio.run(session())
    events = [e for _, e in log]
    committed = next(e for e in events if e["type"] == "input_audio_buffer.committed")
    completed = events[-1]
    assert completed["item_id"] == committed["item_id"]
    assert completed["transcript"] == expected
    assert completed["usage"]["type"] == "duration" and completed["usage"]["seconds"] > 1
    deltas = [
        (t, e) for t, e in log if e["type"] == "conversation.item.input_audio_transcription.delta"
    ]
    assert all(e["item_id"] == committed["item_id"] for _, e in deltas)
    _check_deltas("".join(e["delta"] for _, e in deltas), completed["transcript"])
    assert any(t < ended for t, _ in deltas), "no partial text arrived before the audio ended"


def test_openai_ga_session_with_server_vad_and_subprotocol_key(
    server: Any, clip: np.ndarray
) -> None:
    silence = np.zeros(round(1.5 * 24000), dtype=np.int16)
    samples = np.concatenate([silence, _at_24k(clip), silence])

    async def session() -> list[dict]:
        log: list[tuple[float, dict]] = []
        protocols = ["realtime", f"openai-insecure-api-key.{KEY}"]
        async with connect(_url(server), subprotocols=protocols) as ws:
            assert ws.subprotocol == "realtime"
            assert json.loads(await ws.recv())["type"] == "session.created"
            update = {
                "type": "session.update",
                "session": {
                    "type": "transcription",
                    "audio": {
                        "input": {
                            "format": {"type": "audio/pcm", "rate": 24000},
                            "transcription": {"model": MODEL},
                            "turn_detection": {"type": "server_vad", "silence_duration_ms": 800},
                        }
                    },
                },
            }
            await ws.send(json.dumps(update))
            updated = await _until(ws, "session.updated", log)
            assert updated["session"]["type"] == "transcription"
            await _stream(ws, _frames(samples, 24000), realtime=False)
            await _until(ws, "conversation.item.input_audio_transcription.completed", log)
        return [e for _, e in log]

    events = asyncio.run(session())
    kinds = [e["type"] for e in events]
    started = kinds.index("input_audio_buffer.speech_started")
    stopped = kinds.index("input_audio_buffer.speech_stopped")
    committed = kinds.index("input_audio_buffer.committed")
    assert started < stopped < committed < len(kinds) - 1
    assert 1000 <= events[started]["audio_start_ms"] <= 1600
    assert events[stopped]["audio_end_ms"] > events[started]["audio_start_ms"] + 2000
    item = events[started]["item_id"]
    assert events[committed]["item_id"] == item == events[-1]["item_id"]
    assert "lazy dog" in events[-1]["transcript"].lower()


def test_bad_events_get_error_events_and_the_session_goes_on(server: Any, clip: np.ndarray) -> None:
    async def session() -> list[dict]:
        errors = []
        async with connect(_url(server), additional_headers=_auth()) as ws:
            await ws.recv()  # session.created
            sends = [
                "{not json",
                json.dumps({"type": "input_audio_buffer.append", "audio": "%%%not base64"}),
                json.dumps({"type": "input_audio_buffer.append", "audio": "AA=="}),  # one byte
                json.dumps({"type": "input_audio_buffer.append"}),
                json.dumps({"type": "response.create"}),
                json.dumps({"type": "input_audio_buffer.commit", "final": True}),
                json.dumps({"type": "session.update", "model": "no-such-model"}),
                json.dumps({"no": "type"}),
            ]
            for text in sends:
                await ws.send(text)
                errors.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
            # The same connection still transcribes.
            await ws.send(json.dumps({"type": "session.update", "model": MODEL}))
            await _stream(ws, _frames(clip, 16000), realtime=False)
            await ws.send(json.dumps({"type": "input_audio_buffer.commit", "final": True}))
            done = await _until(ws, "transcription.done", [])
            assert "lazy dog" in done["text"].lower()
        return errors

    errors = asyncio.run(session())
    assert all(e["type"] == "error" and isinstance(e["error"], str) for e in errors), errors
    assert [e["code"] for e in errors] == [
        "invalid_json",
        "invalid_audio",
        "invalid_audio",
        "invalid_event",
        "unknown_event",
        "model_not_validated",
        "model_not_found",
        "invalid_event",
    ]
    assert httpx.get(f"{server.base_url}/health").status_code == 200


def test_openai_dialect_errors_are_openai_shaped(server: Any) -> None:
    async def session() -> list[dict]:
        async with connect(_url(server, "?intent=transcription"), additional_headers=_auth()) as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            empty = json.loads(await ws.recv())
            bad = {
                "type": "transcription_session.update",
                "session": {"input_audio_transcription": {"model": MODEL, "language": "fr"}},
            }
            await ws.send(json.dumps(bad))
            language = json.loads(await ws.recv())
            return [empty, language]

    empty, language = asyncio.run(session())
    assert empty["type"] == "error" and empty["event_id"]
    assert empty["error"]["code"] == "input_audio_buffer_commit_empty"
    assert empty["error"]["type"] == "invalid_request_error"
    assert language["error"]["param"] == "language"


@pytest.mark.parametrize(
    "headers,protocols",
    [({}, None), ({"Authorization": "Bearer wrong"}, None), ({}, ["openai-insecure-api-key.x"])],
)
def test_wrong_or_missing_key_closes_with_1008(server: Any, headers: dict, protocols: Any) -> None:
    async def session() -> int | None:
        async with connect(_url(server), additional_headers=headers, subprotocols=protocols) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 30)
            return closed.value.rcvd.code if closed.value.rcvd else None

    assert asyncio.run(session()) == 1008
    assert httpx.get(f"{server.base_url}/health").status_code == 200


def test_plain_http_get_is_told_to_use_a_websocket(server: Any) -> None:
    response = httpx.get(f"{server.v1}/realtime", headers=server.headers())
    assert response.status_code == 426 and response.headers["upgrade"] == "websocket"
    assert "WebSocket" in response.json()["error"]["message"]


def test_oversized_buffer_gets_an_error_and_close_1009(server: Any) -> None:
    second = base64.b64encode(np.zeros(16000, dtype=np.int16).tobytes()).decode()

    async def session() -> tuple[dict, int | None]:
        async with connect(_url(server), additional_headers=_auth()) as ws:
            await ws.recv()
            with pytest.raises(ConnectionClosed) as closed:
                for _ in range(40):  # the server buffers at most 30 s
                    await ws.send(
                        json.dumps({"type": "input_audio_buffer.append", "audio": second})
                    )
                while True:
                    event = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    if event["type"] == "error":
                        error = event
            return error, closed.value.rcvd.code if closed.value.rcvd else None

    error, code = asyncio.run(session())
    assert error["code"] == "input_audio_buffer_too_large"
    assert code == 1009
    assert httpx.get(f"{server.base_url}/health").status_code == 200


def test_oversized_event_gets_an_error_and_close_1009(server: Any) -> None:
    huge = json.dumps({"type": "input_audio_buffer.append", "audio": "A" * (9 * 1024 * 1024)})

    async def session() -> tuple[dict, int | None]:
        async with connect(_url(server), additional_headers=_auth(), max_size=None) as ws:
            await ws.recv()
            await ws.send(huge)
            error = json.loads(await asyncio.wait_for(ws.recv(), 30))
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 30)
            return error, closed.value.rcvd.code if closed.value.rcvd else None

    error, code = asyncio.run(session())
    assert error["code"] == "event_too_large"
    assert code == 1009
    assert httpx.get(f"{server.base_url}/health").status_code == 200


def test_eight_concurrent_sessions_finish(server: Any, clip: np.ndarray) -> None:
    first = clip[: 6 * 16000]  # the first sentence and a half: cheaper on CPU, same paths
    expected = _offline(server, _wav(first, 16000))
    frames = _frames(first, 16000)

    async def one() -> str:
        async with connect(_url(server), additional_headers=_auth()) as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "session.update", "model": MODEL}))
            await ws.send(json.dumps({"type": "input_audio_buffer.commit", "final": False}))
            receiver = asyncio.create_task(_until(ws, "transcription.done", [], timeout=300))
            await _stream(ws, frames, realtime=False)
            await ws.send(json.dumps({"type": "input_audio_buffer.commit", "final": True}))
            return (await receiver)["text"]

    async def all_sessions() -> list[str]:
        return await asyncio.gather(*(one() for _ in range(8)))

    assert asyncio.run(all_sessions()) == [expected] * 8
    assert httpx.get(f"{server.base_url}/health").status_code == 200


@pytest.mark.parametrize("protocol", ["vllm", "openai"])
def test_realtime_client_cli_prints_the_transcript(
    server: Any, clip: np.ndarray, tmp_path: Path, capsys: Any, protocol: str
) -> None:
    from mono_llm.openai_api.cli import main

    wav = _wav(clip, 16000)
    (tmp_path / "clip.wav").write_bytes(wav)
    expected = _offline(server, wav if protocol == "vllm" else _wav(_at_24k(clip), 24000))
    argv = ["realtime-client", str(tmp_path / "clip.wav"), "--url", _url(server)]
    argv += ["--api-key", KEY, "--speed", "0", "--protocol", protocol]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith(f"[final] {expected}")
    assert main([*argv[:-4], "--api-key", "wrong"]) == 1
    assert "1008" in capsys.readouterr().err


def test_openai_client_realtime_transcription_session(server: Any, clip: np.ndarray) -> None:
    """The official `openai` client's realtime connection, unchanged, against this server."""
    client = server.openai(websocket_base_url=_url(server).removesuffix("/realtime"))
    clip24 = _at_24k(clip[: 6 * 16000])
    with client.realtime.connect(model=MODEL) as connection:
        connection.session.update(
            session={
                "type": "transcription",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": 24000},
                        "transcription": {"model": MODEL},
                        "turn_detection": None,
                    }
                },
            }
        )
        for frame in _frames(clip24, 24000):
            connection.input_audio_buffer.append(audio=frame)
        connection.input_audio_buffer.commit()
        kinds = []
        for event in connection:
            kinds.append(event.type)
            assert event.type != "error", event
            if event.type == "conversation.item.input_audio_transcription.completed":
                transcript = event.transcript
                break
    assert kinds[0] == "session.created" and "session.updated" in kinds
    assert "input_audio_buffer.committed" in kinds
    assert transcript == _offline(server, _wav(clip24, 24000))
