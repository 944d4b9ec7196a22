"""Events of /v1/realtime, in its two dialects.

vLLM's realtime protocol: the client sends `session.update` (model, optional language and
prompt), `input_audio_buffer.append` (base64 PCM16 mono at 16 kHz) and
`input_audio_buffer.commit` (`final: false` starts or continues a transcription, `final: true`
ends its audio); the server sends `session.created`, `transcription.delta`,
`transcription.done` and `error` (`{"error": "<message>", "code": "<code>"}`).

OpenAI's realtime transcription protocol: the client configures the session with
`transcription_session.update` (or `session.update` whose session has `type: transcription`),
streams PCM16 at 24 kHz and commits (or lets server VAD commit on silence); the server answers
with `input_audio_buffer.*` and `conversation.item.input_audio_transcription.delta` /
`.completed` events keyed by the item id of each committed utterance, and errors as
`{"error": {"type", "code", "message", "param", "event_id"}}`.

Unknown fields are accepted and ignored (newer clients keep working).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import Field

from mono_llm.openai_api.protocol import OpenAIBaseModel, UsageInfo


def event_id() -> str:
    return f"event_{uuid.uuid4().hex[:24]}"


def item_id() -> str:
    return f"item_{uuid.uuid4().hex[:24]}"


# ---------------------------------------------------------------------- client events (both)
class InputAudioBufferAppend(OpenAIBaseModel):
    type: Literal["input_audio_buffer.append"] = "input_audio_buffer.append"
    audio: str  # base64 PCM16 little-endian mono (16 kHz in vLLM's dialect, 24 kHz in OpenAI's)


class InputAudioBufferCommit(OpenAIBaseModel):
    type: Literal["input_audio_buffer.commit"] = "input_audio_buffer.commit"
    final: bool = False  # vLLM: true ends the utterance's audio; OpenAI clients never send it


# ---------------------------------------------------------------------- vLLM's dialect
class VllmSessionUpdate(OpenAIBaseModel):
    type: Literal["session.update"] = "session.update"
    model: str | None = None
    language: str | None = None
    prompt: str = ""


class VllmSessionCreated(OpenAIBaseModel):
    type: Literal["session.created"] = "session.created"
    id: str = Field(default_factory=lambda: f"sess-{uuid.uuid4().hex}")
    created: int = Field(default_factory=lambda: int(time.time()))


class TranscriptionDelta(OpenAIBaseModel):
    type: Literal["transcription.delta"] = "transcription.delta"
    delta: str


class TranscriptionDone(OpenAIBaseModel):
    type: Literal["transcription.done"] = "transcription.done"
    text: str
    usage: UsageInfo | None = None


class VllmErrorEvent(OpenAIBaseModel):
    type: Literal["error"] = "error"
    error: str
    code: str | None = None


# ---------------------------------------------------------------------- OpenAI's dialect
class TurnDetection(OpenAIBaseModel):
    """`server_vad` commits the buffer after `silence_duration_ms` of quiet. `threshold` is
    OpenAI's 0-1 knob; this server's energy VAD maps 0.5 to -40 dBFS (see `threshold_db`)."""

    type: Literal["server_vad"] = "server_vad"
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    prefix_padding_ms: int = Field(default=300, ge=0, le=5000)
    silence_duration_ms: int = Field(default=500, ge=30, le=10000)

    def threshold_db(self) -> float:
        # 0 -> -70 dBFS (everything but digital silence is speech), 1 -> -10 dBFS.
        return -70.0 + 60.0 * self.threshold


class InputAudioTranscription(OpenAIBaseModel):
    model: str | None = None
    language: str | None = None
    prompt: str = ""


class AudioFormat(OpenAIBaseModel):
    """The GA session's `audio.input.format`: PCM16 at 24 kHz (16 kHz accepted too)."""

    type: Literal["audio/pcm"] = "audio/pcm"
    rate: Literal[16000, 24000] = 24000


class AudioInput(OpenAIBaseModel):
    format: AudioFormat = Field(default_factory=AudioFormat)
    transcription: InputAudioTranscription | None = None
    turn_detection: TurnDetection | None = Field(default_factory=TurnDetection)


class SessionAudio(OpenAIBaseModel):
    input: AudioInput = Field(default_factory=AudioInput)


class TranscriptionSessionConfig(OpenAIBaseModel):
    """The beta `transcription_session.update` session."""

    input_audio_format: Literal["pcm16"] = "pcm16"
    input_audio_transcription: InputAudioTranscription | None = None
    turn_detection: TurnDetection | None = Field(default_factory=TurnDetection)


class GaSessionConfig(OpenAIBaseModel):
    """The GA `session.update` session of a transcription session."""

    type: Literal["transcription"] = "transcription"
    audio: SessionAudio = Field(default_factory=SessionAudio)


class TranscriptionSessionUpdate(OpenAIBaseModel):
    type: Literal["transcription_session.update"] = "transcription_session.update"
    session: TranscriptionSessionConfig = Field(default_factory=TranscriptionSessionConfig)


class GaSessionUpdate(OpenAIBaseModel):
    type: Literal["session.update"] = "session.update"
    session: GaSessionConfig


class InputAudioBufferClear(OpenAIBaseModel):
    type: Literal["input_audio_buffer.clear"] = "input_audio_buffer.clear"


class ServerEvent(OpenAIBaseModel):
    event_id: str = Field(default_factory=event_id)


class SessionEvent(ServerEvent):
    """`transcription_session.created` / `.updated`, or GA `session.created` / `.updated`."""

    type: str
    session: dict[str, Any]


class SpeechStarted(ServerEvent):
    type: Literal["input_audio_buffer.speech_started"] = "input_audio_buffer.speech_started"
    audio_start_ms: int
    item_id: str


class SpeechStopped(ServerEvent):
    type: Literal["input_audio_buffer.speech_stopped"] = "input_audio_buffer.speech_stopped"
    audio_end_ms: int
    item_id: str


class BufferCommitted(ServerEvent):
    type: Literal["input_audio_buffer.committed"] = "input_audio_buffer.committed"
    previous_item_id: str | None = None
    item_id: str


class BufferCleared(ServerEvent):
    type: Literal["input_audio_buffer.cleared"] = "input_audio_buffer.cleared"


class InputTranscriptionDelta(ServerEvent):
    type: Literal["conversation.item.input_audio_transcription.delta"] = (
        "conversation.item.input_audio_transcription.delta"
    )
    item_id: str
    content_index: int = 0
    delta: str


class DurationUsage(OpenAIBaseModel):
    type: Literal["duration"] = "duration"
    seconds: float


class InputTranscriptionCompleted(ServerEvent):
    type: Literal["conversation.item.input_audio_transcription.completed"] = (
        "conversation.item.input_audio_transcription.completed"
    )
    item_id: str
    content_index: int = 0
    transcript: str
    usage: DurationUsage | None = None


class ErrorDetail(OpenAIBaseModel):
    type: str = "invalid_request_error"
    code: str | None = None
    message: str
    param: str | None = None
    event_id: str | None = None  # the client event that caused it, when it had one


class OpenAIErrorEvent(ServerEvent):
    type: Literal["error"] = "error"
    error: ErrorDetail
