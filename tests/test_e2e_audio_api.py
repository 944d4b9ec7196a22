"""/v1/audio/transcriptions and /v1/audio/translations end to end: a real uvicorn server on
real Whisper weights (tiny.en; multilingual base for translation), the real `openai` client
and plain multipart posts, every response format, streaming, and the bad uploads."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("mono_llm.audio")
soundfile = pytest.importorskip("soundfile")

MODEL = "whisper-tiny-en"
SENTENCE = "The quick brown fox jumps over the lazy dog."
_SRT_CUE = re.compile(r"^\d+\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n.+$", re.M)
_VTT_CUE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}\n.+$", re.M)


def _checkpoint(name: str) -> Path:
    from mono_llm.core.testing import whisper_checkpoint_path

    try:
        return whisper_checkpoint_path(name)
    except ModuleNotFoundError as exc:
        pytest.skip(str(exc))


def _speak(text: str, out: Path) -> bytes:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    subprocess.run(["espeak-ng", "-w", str(out), text], check=True)
    return out.read_bytes()


def _wait_ready(server: Any) -> None:
    deadline = time.monotonic() + 300
    while httpx.get(f"{server.base_url}/ready").status_code != 200:
        assert time.monotonic() < deadline, "the server did not become ready"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return _speak(SENTENCE, tmp_path_factory.mktemp("speech") / "sentence.wav")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, server_factory: Any) -> Iterator[Any]:
    from mono_llm.core.config import AsyncEngineArgs
    from mono_llm.openai_api import build_app
    from mono_llm.openai_api.server_state import ServerArgs

    folder = _checkpoint("tiny.en")
    app = build_app(
        AsyncEngineArgs(model=str(folder), served_model_name=MODEL, dtype="float32"),
        ServerArgs(max_audio_file_size_mb=1.0, max_audio_duration_s=60.0),
    )
    with server_factory(app) as running:
        _wait_ready(running)
        yield running


def _post(server: Any, files: dict | None, data: dict, path: str = "transcriptions"):
    return httpx.post(f"{server.v1}/audio/{path}", files=files, data=data, timeout=120)


def test_openai_client_verbose_json(server: Any, wav: bytes) -> None:
    client = server.openai()
    result = client.audio.transcriptions.create(
        file=("sentence.wav", wav),
        model=MODEL,
        language="en",
        response_format="verbose_json",
    )
    assert "lazy dog" in result.text.lower()
    assert result.language == "english"
    assert 2.0 < result.duration < 6.0
    assert result.segments and result.segments[0].id == 0
    segment = result.segments[0]
    assert 0.0 <= segment.start < segment.end <= result.duration + 0.01
    assert segment.tokens and segment.avg_logprob < 0.0
    assert segment.compression_ratio > 0.0 and 0.0 <= segment.no_speech_prob <= 1.0
    assert result.usage.type == "duration" and result.usage.seconds >= 1


def test_multipart_form_and_every_format(server: Any, wav: bytes) -> None:
    files = {"file": ("sentence.wav", wav, "audio/wav")}
    body = _post(server, files, {"model": MODEL, "language": "en"})
    assert body.status_code == 200
    data = body.json()
    assert "lazy dog" in data["text"].lower()
    assert data["usage"] == {"type": "duration", "seconds": data["usage"]["seconds"]}

    text = _post(server, files, {"model": MODEL, "response_format": "text"})
    assert text.headers["content-type"].startswith("text/plain")
    assert text.text.strip() == data["text"]

    srt = _post(server, files, {"model": MODEL, "response_format": "srt"})
    assert srt.status_code == 200 and _SRT_CUE.search(srt.text), srt.text
    assert srt.text.startswith("1\n00:00:00,000 --> ")

    vtt = _post(server, files, {"model": MODEL, "response_format": "vtt"})
    assert vtt.status_code == 200 and vtt.text.startswith("WEBVTT\n\n")
    assert _VTT_CUE.search(vtt.text), vtt.text

    prompted = _post(server, files, {"model": MODEL, "prompt": "A quick brown fox."})
    assert prompted.status_code == 200 and "dog" in prompted.json()["text"].lower()

    verbose = _post(
        server,
        files,
        {"model": MODEL, "response_format": "verbose_json", "timestamp_granularities[]": "segment"},
    )
    assert set(verbose.json()) >= {"task", "language", "duration", "text", "segments", "usage"}


def test_long_audio_is_split_into_windows_and_joined(server: Any, wav: bytes) -> None:
    librosa = pytest.importorskip("librosa")
    samples, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    # 8 kHz keeps the upload under this server's 1 MB limit
    samples, rate = librosa.resample(samples, orig_sr=rate, target_sr=8000).tolist(), 8000
    silence = [0.0] * (32 * rate)  # the sentence, 32 s of silence, the sentence again
    long_wav = io.BytesIO()
    soundfile.write(long_wav, [*samples, *silence, *samples], rate, format="WAV")
    response = _post(
        server,
        {"file": ("long.wav", long_wav.getvalue())},
        {"model": MODEL, "language": "en", "response_format": "verbose_json"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["text"].lower().count("the quick") == 2, body["text"]
    assert body["duration"] > 36.0 and body["usage"]["seconds"] >= 37
    starts = [s["start"] for s in body["segments"]]
    assert starts == sorted(starts) and starts[-1] > 25.0  # on the second window's clock


def test_streaming_transcription(server: Any, wav: bytes) -> None:
    events = []
    data = {"model": MODEL, "stream": "true", "stream_include_usage": "true"}
    with httpx.stream(
        "POST",
        f"{server.v1}/audio/transcriptions",
        files={"file": ("sentence.wav", wav)},
        data=data,
        timeout=120,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: ") :])
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "transcription.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"]["content"] or "" for c in chunks if c["choices"])
    assert "lazy dog" in text.lower()
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] > 3 and usage["total_tokens"] > usage["completion_tokens"]


def test_bad_uploads_are_4xx_and_the_server_stays_healthy(server: Any, wav: bytes) -> None:
    samples, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    mp3 = io.BytesIO()
    soundfile.write(mp3, samples, rate, format="MP3")
    too_long = io.BytesIO()  # 61 s of 8-bit 8 kHz silence: 0.5 MB, over the 60 s limit
    soundfile.write(too_long, [0.0] * (61 * 8000), 8000, format="WAV", subtype="PCM_U8")
    cases = {
        "too long": ({"file": ("long.wav", too_long.getvalue())}, 400),
        "empty": ({"file": ("a.wav", b"")}, 400),
        "truncated mp3": ({"file": ("a.mp3", mp3.getvalue()[:400])}, 400),
        "text named .wav": ({"file": ("a.wav", b"just some text, not audio\n" * 10)}, 400),
        "over the limit": ({"file": ("big.wav", b"\0" * (2 * 1024**2))}, 413),
        "no file field": ({"other": ("a.txt", b"x")}, 400),
        "two files": ([("file", ("a.wav", wav)), ("file", ("b.wav", wav))], 400),
    }
    for name, (files, status) in cases.items():
        response = _post(server, files, {"model": MODEL})
        assert response.status_code == status, (name, response.text)
        error = response.json()["error"]
        assert error["message"] and error["code"] == status, name
        if name not in ("no file field", "two files"):
            assert error["param"] == "file", name
    words = _post(
        server,
        {"file": ("a.wav", wav)},
        {"model": MODEL, "timestamp_granularities[]": "word"},
    )
    assert words.status_code == 400 and "word" in words.json()["error"]["message"]
    english_only = _post(server, {"file": ("a.wav", wav)}, {"model": MODEL}, "translations")
    assert english_only.status_code == 400
    assert "English-only" in english_only.json()["error"]["message"]
    malformed = httpx.post(
        f"{server.v1}/audio/transcriptions",
        content=b"--xyz\r\ngarbage",
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert malformed.status_code == 400 and malformed.json()["error"]["param"] == "file"
    as_json = httpx.post(f"{server.v1}/audio/transcriptions", json={"model": MODEL})
    assert as_json.status_code == 400 and "multipart/form-data" in as_json.text
    assert httpx.get(f"{server.base_url}/health").status_code == 200
    ok = _post(server, {"file": ("a.wav", wav)}, {"model": MODEL})
    assert ok.status_code == 200 and "dog" in ok.json()["text"].lower()


def test_multilingual_language_detection_and_translation_on_random_whisper(
    server_factory: Any, wav: bytes
) -> None:
    """The multilingual paths (language detected by one decoder step over the language
    tokens, the translate task, streaming a translation) on the tiny random fixture; its
    text is noise, so only the shapes are checked."""
    from mono_llm.core.config import AsyncEngineArgs
    from mono_llm.core.testing import fixture_path
    from mono_llm.openai_api import build_app

    app = build_app(AsyncEngineArgs(model=str(fixture_path("tiny-whisper")), served_model_name="t"))
    with server_factory(app) as running:
        _wait_ready(running)
        data = {"model": "t", "response_format": "verbose_json", "max_completion_tokens": "8"}
        detected = _post(running, {"file": ("a.wav", wav)}, data)
        assert detected.status_code == 200, detected.text
        body = detected.json()
        assert body["language"] in {"english", "german", "french", "spanish", "chinese", "japanese"}
        assert body["task"] == "transcribe"
        translated = _post(
            running, {"file": ("a.wav", wav)}, {**data, "language": "de"}, "translations"
        )
        assert translated.status_code == 200 and translated.json()["task"] == "translate"
        unknown = _post(running, {"file": ("a.wav", wav)}, {"model": "t", "language": "xx"})
        assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "language"
        with httpx.stream(
            "POST",
            f"{running.v1}/audio/translations",
            files={"file": ("a.wav", wav)},
            data={"model": "t", "stream": "true", "max_completion_tokens": "4"},
            timeout=120,
        ) as response:
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        assert json.loads(lines[0][len("data: ") :])["object"] == "translation.chunk"


@pytest.mark.slow  # converts and runs the 74M-parameter multilingual base on CPU
def test_translation_with_multilingual_base(
    tmp_path_factory: pytest.TempPathFactory, server_factory: Any
) -> None:
    from mono_llm.core.config import AsyncEngineArgs
    from mono_llm.openai_api import build_app

    folder = _checkpoint("base")
    wav = _speak(SENTENCE, tmp_path_factory.mktemp("speech-base") / "sentence.wav")
    app = build_app(AsyncEngineArgs(model=str(folder), served_model_name="base", dtype="float32"))
    with server_factory(app) as server:
        _wait_ready(server)
        client = server.openai()
        translated = client.audio.translations.create(file=("s.wav", wav), model="base")
        assert "dog" in translated.text.lower()
        detected = client.audio.transcriptions.create(
            file=("s.wav", wav), model="base", response_format="verbose_json"
        )
        assert detected.language == "english"
