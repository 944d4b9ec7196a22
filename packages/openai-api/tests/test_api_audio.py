"""The audio endpoints' pieces that need no model: the missing-extra error, subtitles, form
fields, and routes registered only for models that transcribe."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from mono_llm.core.config import EngineArgs
from mono_llm.core.testing import fixture_path
from mono_llm.openai_api import build_app
from mono_llm.openai_api.audio.formats import to_srt, to_vtt
from mono_llm.openai_api.audio.protocol import TranscriptionRequest
from mono_llm.openai_api.audio.serving import AUDIO_EXTRA_HINT, import_audio
from mono_llm.openai_api.errors import OpenAIError


def test_missing_audio_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mono_llm.audio", None)  # makes the import fail
    with pytest.raises(OpenAIError) as info:
        import_audio()
    assert info.value.status == 501
    assert AUDIO_EXTRA_HINT in info.value.message
    assert AUDIO_EXTRA_HINT == "pip install mono-llm[audio]"


def test_srt_and_vtt_cues() -> None:
    segments = [
        SimpleNamespace(start=0.0, end=2.5, text=" Hello there."),
        SimpleNamespace(start=3661.042, end=3662.0, text=" Later."),
    ]
    assert to_srt(segments) == (
        "1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n"
        "2\n01:01:01,042 --> 01:01:02,000\nLater.\n"
    )
    assert to_vtt(segments) == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nHello there.\n\n"
        "01:01:01.042 --> 01:01:02.000\nLater.\n"
    )


def test_form_fields_are_validated() -> None:
    request = TranscriptionRequest.model_validate(
        {"model": "m", "temperature": "0.2", "stream": "true", "language": " EN ", "seed": "3"}
    )
    assert (request.temperature, request.stream, request.language, request.seed) == (
        0.2,
        True,
        "en",
        3,
    )
    for bad in ({"response_format": "docx"}, {"temperature": "3"}, {"top_p": "0"}):
        with pytest.raises(ValidationError):
            TranscriptionRequest.model_validate(bad)


def test_audio_routes_only_for_models_that_transcribe() -> None:
    app = build_app(EngineArgs(model=str(fixture_path("tiny-llama"))))
    paths = set(app.openapi()["paths"])
    assert "/v1/completions" in paths
    assert "/v1/audio/transcriptions" not in paths
    assert "/v1/audio/translations" not in paths
