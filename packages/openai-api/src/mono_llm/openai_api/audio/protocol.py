"""Request and response models of /v1/audio/transcriptions and /v1/audio/translations.

Requests arrive as multipart forms (the uploaded file plus text fields), so the request model
is built from the form's text fields after the file is taken out; responses mirror OpenAI's
(json, text, srt, vtt, verbose_json) with vLLM's usage `{"type": "duration", "seconds": N}`
and its `transcription.chunk` stream events.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import Field, field_validator

from mono_llm.core.models.whisper_prompt import Segment
from mono_llm.openai_api.protocol import OpenAIBaseModel, UsageInfo

ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]


class TranscriptionRequest(OpenAIBaseModel):
    """The form fields of a transcription or translation request (the file comes apart)."""

    model: str | None = None
    language: str | None = None  # ISO-639-1 code; None: detected from the audio
    prompt: str = ""  # text the audio continues (style, spelling of names)
    response_format: ResponseFormat = "json"
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    timestamp_granularities: list[Literal["word", "segment"]] = Field(default_factory=list)
    stream: bool = False
    stream_include_usage: bool = False
    stream_continuous_usage_stats: bool = False
    # vLLM's sampling extras
    seed: int | None = None
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = None
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    @field_validator("language")
    @classmethod
    def _language(cls, value: str | None) -> str | None:
        return value.strip().lower() or None if value is not None else None


class TranscriptionUsage(OpenAIBaseModel):
    type: Literal["duration"] = "duration"
    seconds: int


class TranscriptionResponse(OpenAIBaseModel):
    text: str
    usage: TranscriptionUsage | None = None


class TranscriptionVerboseResponse(OpenAIBaseModel):
    task: Literal["transcribe", "translate"] = "transcribe"
    language: str
    duration: float
    text: str
    # The engine's segments, already in OpenAI's verbose_json shape.
    segments: list[Segment] = Field(default_factory=list)
    usage: TranscriptionUsage | None = None


class DeltaText(OpenAIBaseModel):
    content: str | None = None


class TranscriptionStreamChoice(OpenAIBaseModel):
    delta: DeltaText
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class TranscriptionStreamResponse(OpenAIBaseModel):
    """One SSE event of a streamed transcription (vLLM's shape)."""

    id: str = Field(default_factory=lambda: f"trsc-{uuid.uuid4().hex}")
    object: Literal["transcription.chunk", "translation.chunk"] = "transcription.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[TranscriptionStreamChoice] = Field(default_factory=list)
    usage: UsageInfo | None = None
