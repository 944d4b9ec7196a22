"""One /v1/realtime WebSocket connection: events in, audio buffered, transcripts out.

The dialect is fixed by `?intent=transcription` (OpenAI's) or else by the client's first
event: `transcription_session.update`, or `session.update` carrying a `session` object, is
OpenAI's; anything else is vLLM's (whose `session.created` the server sent on connect).

Three tasks per connection: the receive loop (parses events, buffers audio, runs VAD), the
sender (drains a bounded outbox to the socket) and the final decoder (transcribes committed
utterances in order); plus at most one partial decode at a time. Memory is bounded: the
outbox holds `SEND_QUEUE_EVENTS` events and a producer that finds it full waits at most
`SEND_STALL_S` before the connection is closed (a client that stops reading cannot grow it),
the audio buffer is capped by `max_buffer_s` (then close 1009), at most
`MAX_PENDING_COMMITS` utterances wait for their final decode, and the session ends after
`max_session_s` (close 1008).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from mono_llm.core.models.registry import supports_transcription
from mono_llm.openai_api.audio.serving import AudioServing, Transcript, import_audio
from mono_llm.openai_api.errors import OpenAIError
from mono_llm.openai_api.protocol import UsageInfo
from mono_llm.openai_api.realtime import protocol as p
from mono_llm.openai_api.realtime.transcriber import (
    SAMPLING_RATE,
    Utterance,
    UtteranceTranscriber,
)
from mono_llm.openai_api.served_models import ServedModel, ServedModels

logger = logging.getLogger("mono_llm.openai_api.realtime")

SEND_QUEUE_EVENTS = 256
SEND_STALL_S = 30.0
MAX_PENDING_COMMITS = 8
# One event's JSON text; larger frames close the connection with 1009 (uvicorn's own
# --ws-max-size, 16 MiB by default, stops bigger ones before they are read).
MAX_EVENT_CHARS = 8 * 1024 * 1024

CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013


@dataclass(frozen=True, slots=True)
class RealtimeLimits:
    max_buffer_s: float = 600.0
    max_session_s: float = 3600.0
    partial_interval_s: float = 0.5

    def __post_init__(self) -> None:
        flags = {
            "max_buffer_s": "--max-realtime-buffer-s",
            "max_session_s": "--max-realtime-session-s",
            "partial_interval_s": "--realtime-partial-interval-s",
        }
        for name, flag in flags.items():
            if not getattr(self, name) > 0:
                raise ValueError(f"{flag} must be > 0, got {getattr(self, name)}")

    @classmethod
    def from_args(cls, args: Any) -> RealtimeLimits:
        """From the server flags; a ValueError naming the bad one."""
        return cls(
            max_buffer_s=args.max_realtime_buffer_s,
            max_session_s=args.max_realtime_session_s,
            partial_interval_s=args.realtime_partial_interval_s,
        )


class CloseConnection(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


class EventError(Exception):
    """A client event refused; the connection goes on."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


class RealtimeSession:
    def __init__(
        self,
        websocket: WebSocket,
        serving: AudioServing,
        registry: ServedModels,
        limits: RealtimeLimits,
        *,
        intent: str | None = None,
        default_model: str | None = None,
    ) -> None:
        self.ws = websocket
        self.serving = serving
        self.registry = registry
        self.limits = limits
        self.intent = intent
        self.default_model = default_model
        self.dialect: str | None = "openai" if intent == "transcription" else None
        self.ga = False  # OpenAI's GA session shape (session.update) rather than the beta's
        self.outbox: asyncio.Queue[str | None] = asyncio.Queue(SEND_QUEUE_EVENTS)
        self.finals: asyncio.Queue[tuple[Utterance, UtteranceTranscriber]] = asyncio.Queue()
        self.pending_finals = 0
        self.transcriber: UtteranceTranscriber | None = None
        self.session_config: dict[str, Any] = {}
        self.turn_detection: p.TurnDetection | None = None
        self.vad: Any = None
        self.vad_origin = 0  # stream offset where the VAD was last reset
        self.resampler: Any = None  # 24 kHz -> 16 kHz, OpenAI's dialect
        self.utterance: Utterance | None = None
        self.streaming = False  # vLLM: a `commit final=false` asked for partial text
        self.partial_task: asyncio.Task[None] | None = None
        self.stream_samples = 0  # 16 kHz samples received in the whole session
        self.previous_item_id: str | None = None
        self._abort: CloseConnection | None = None
        self._stalled = False  # the outbox stayed full for SEND_STALL_S
        self._main: asyncio.Task[Any] | None = None

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        offered = self.ws.scope.get("subprotocols") or []
        await self.ws.accept(subprotocol="realtime" if "realtime" in offered else None)
        self._main = asyncio.current_task()
        sender = asyncio.create_task(self._send_loop())
        finals = asyncio.create_task(self._final_loop())
        close: CloseConnection | None = CloseConnection(CLOSE_NORMAL, "")
        try:
            async with asyncio.timeout(self.limits.max_session_s):
                if self.dialect == "openai":
                    self._configure_openai(p.TranscriptionSessionConfig())
                    await self._emit(self._session_event("created"))
                else:
                    await self._emit(p.VllmSessionCreated())
                await self._receive_loop()
        except TimeoutError:
            await self._try_error(
                "session_expired", "The session reached --max-realtime-session-s."
            )
            close = CloseConnection(CLOSE_POLICY, "session time limit reached")
        except CloseConnection as exc:
            close = exc
        except WebSocketDisconnect:
            close = None
        except asyncio.CancelledError:
            if self._abort is None:
                raise
            close = self._abort
        except Exception:
            logger.exception("realtime session failed")
            await self._try_error("processing_error", "Internal error; the session ends.")
            close = CloseConnection(CLOSE_INTERNAL, "internal error")
        finally:
            for task in (self.partial_task, finals):
                if task is not None:
                    task.cancel()
            await asyncio.gather(
                *(t for t in (self.partial_task, finals) if t), return_exceptions=True
            )
            await self._shutdown(sender, close)

    async def _shutdown(self, sender: asyncio.Task[None], close: CloseConnection | None) -> None:
        """Send what is queued (the error that explains the close), then close; a client
        that stopped reading gets no more time."""
        if close is not None and not self._stalled:
            with contextlib.suppress(asyncio.QueueFull):
                self.outbox.put_nowait(None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(sender), 5.0)
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        if close is not None:
            with contextlib.suppress(Exception):
                await self.ws.close(close.code, close.reason)

    def _fail(self, code: int, reason: str) -> None:
        """Close from a background task: stop the receive loop with this close code."""
        if self._abort is None:
            self._abort = CloseConnection(code, reason)
            if self._main is not None:
                self._main.cancel()

    async def _send_loop(self) -> None:
        while (text := await self.outbox.get()) is not None:
            try:
                await self.ws.send_text(text)
            except Exception:  # the client went away; the receive loop sees the disconnect
                return

    async def _emit(self, event: BaseModel) -> None:
        """Queue an event; wait at most SEND_STALL_S for room (backpressure)."""
        text = event.model_dump_json()
        try:
            self.outbox.put_nowait(text)
        except asyncio.QueueFull:
            try:
                await asyncio.wait_for(self.outbox.put(text), SEND_STALL_S)
            except TimeoutError:
                self._stalled = True
                raise CloseConnection(CLOSE_POLICY, "the client is not reading events") from None

    async def _emit_from_task(self, event: BaseModel) -> None:
        try:
            await asyncio.shield(self._emit(event))
        except CloseConnection as exc:
            self._fail(exc.code, exc.reason)

    async def _error(self, code: str, message: str, param: str | None = None) -> None:
        await self._emit(self._error_event(code, message, param))

    async def _try_error(self, code: str, message: str) -> None:
        """An error event if the outbox has room (the session is ending anyway)."""
        text = self._error_event(code, message).model_dump_json()
        with contextlib.suppress(asyncio.QueueFull):
            self.outbox.put_nowait(text)

    def _error_event(self, code: str, message: str, param: str | None = None) -> BaseModel:
        if self.dialect == "openai":
            kind = "server_error" if code == "processing_error" else "invalid_request_error"
            detail = p.ErrorDetail(type=kind, code=code, message=message, param=param)
            return p.OpenAIErrorEvent(error=detail)
        return p.VllmErrorEvent(error=message, code=code)

    # ------------------------------------------------------------------ receiving
    async def _receive_loop(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", CLOSE_NORMAL))
            text = message.get("text")
            if text is None:
                await self._error("invalid_json", "Send events as JSON text frames, not binary.")
                continue
            if len(text) > MAX_EVENT_CHARS:
                await self._error(
                    "event_too_large", f"An event is limited to {MAX_EVENT_CHARS} characters."
                )
                raise CloseConnection(CLOSE_TOO_BIG, "event too large")
            try:
                event = json.loads(text)
            except ValueError:
                await self._error("invalid_json", "The event is not valid JSON.")
                continue
            if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                await self._error("invalid_event", "An event is a JSON object with a `type`.")
                continue
            try:
                await self._dispatch(event)
            except EventError as exc:
                await self._error(exc.code, exc.message, exc.param)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(x) for x in first["loc"]) or "event"
                await self._error("invalid_event", f"{event['type']}: {where}: {first['msg']}")

    async def _dispatch(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if self.dialect is None:
            openai = kind == "transcription_session.update" or (
                kind == "session.update" and isinstance(event.get("session"), dict)
            )
            self.dialect = "openai" if openai else "vllm"
        if kind == "session.update" and self.dialect == "vllm":
            await self._vllm_session_update(p.VllmSessionUpdate.model_validate(event))
        elif kind in ("session.update", "transcription_session.update"):
            if self.dialect != "openai":
                raise EventError("invalid_event", "This session speaks vLLM's protocol.")
            await self._openai_session_update(kind, event)
        elif kind == "input_audio_buffer.append":
            await self._append(p.InputAudioBufferAppend.model_validate(event))
        elif kind == "input_audio_buffer.commit":
            await self._commit(p.InputAudioBufferCommit.model_validate(event))
        elif kind == "input_audio_buffer.clear":
            await self._clear()
        else:
            raise EventError("unknown_event", f"Unknown event type: {kind}")

    # ------------------------------------------------------------------ session set-up
    def _transcription_model(self, name: str | None) -> ServedModel:
        name = name or self.default_model
        if not name:
            for model in self.registry:
                if supports_transcription(model.engine.model_config.architectures):
                    return model
        try:
            model = self.registry.resolve(name)
        except OpenAIError as exc:
            raise EventError("model_not_found", exc.message, "model") from None
        if not supports_transcription(model.engine.model_config.architectures):
            raise EventError(
                "model_not_found", f"The model `{model.name}` does not transcribe.", "model"
            )
        return model

    def _new_transcriber(self, model: str | None, language: str | None, prompt: str) -> None:
        served = self._transcription_model(model)
        if language is not None:
            language = language.strip().lower() or None
        try:
            self.transcriber = UtteranceTranscriber(self.serving, served, language, prompt)
        except OpenAIError as exc:
            raise EventError("invalid_event", exc.message, exc.param) from None

    async def _vllm_session_update(self, update: p.VllmSessionUpdate) -> None:
        self._new_transcriber(update.model, update.language, update.prompt)

    async def _openai_session_update(self, kind: str, event: dict[str, Any]) -> None:
        if kind == "session.update":
            session = p.GaSessionUpdate.model_validate(event).session
            self.ga = True
            audio_in = session.audio.input
            config = p.TranscriptionSessionConfig(
                input_audio_transcription=audio_in.transcription,
                turn_detection=audio_in.turn_detection,
            )
            self._configure_openai(config, rate=audio_in.format.rate)
        else:
            config = p.TranscriptionSessionUpdate.model_validate(event).session
            self.ga = False
            self._configure_openai(config)
        await self._emit(self._session_event("updated"))

    def _configure_openai(self, config: p.TranscriptionSessionConfig, rate: int = 24000) -> None:
        audio = import_audio()
        transcription = config.input_audio_transcription or p.InputAudioTranscription()
        self._new_transcriber(transcription.model, transcription.language, transcription.prompt)
        assert self.transcriber is not None
        if self.utterance is None or not self.utterance.num_samples:
            self.resampler = (
                audio.StreamingResampler(rate, SAMPLING_RATE) if rate != SAMPLING_RATE else None
            )
        self.turn_detection = config.turn_detection
        detection = config.turn_detection
        if detection is not None:
            vad_config = audio.VADConfig(
                threshold_db=detection.threshold_db(),
                silence_ms=detection.silence_duration_ms,
                prefix_padding_ms=detection.prefix_padding_ms,
            )
            self.vad = audio.EnergyVAD(SAMPLING_RATE, vad_config)
            self.vad_origin = self.stream_samples
        else:
            self.vad = None
        self.session_config = {
            "input_audio_format": "pcm16",
            "input_audio_rate": rate,
            "input_audio_transcription": {
                "model": self.transcriber.model.name,
                "language": self.transcriber.request.language,
                "prompt": self.transcriber.request.prompt,
            },
            "turn_detection": detection.model_dump() if detection else None,
        }

    def _session_event(self, what: str) -> p.SessionEvent:
        if self.ga:
            c = self.session_config
            session = {
                "type": "transcription",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": c["input_audio_rate"]},
                        "transcription": c["input_audio_transcription"],
                        "turn_detection": c["turn_detection"],
                    }
                },
            }
            return p.SessionEvent(type=f"session.{what}", session=session)
        session = {"object": "realtime.transcription_session", **self.session_config}
        return p.SessionEvent(type=f"transcription_session.{what}", session=session)

    # ------------------------------------------------------------------ audio
    def _current(self) -> Utterance:
        if self.utterance is None:
            self.utterance = Utterance(p.item_id(), start_sample=self.stream_samples)
        return self.utterance

    async def _append(self, append: p.InputAudioBufferAppend) -> None:
        audio = import_audio()
        if self.dialect == "openai" and self.transcriber is None:
            self._configure_openai(p.TranscriptionSessionConfig())
        try:
            data = base64.b64decode(append.audio, validate=True)
            samples = audio.pcm16_to_float32(data)
        except (binascii.Error, ValueError) as exc:
            raise EventError("invalid_audio", f"Invalid audio data: {exc}", "audio") from None
        if self.resampler is not None:
            samples = self.resampler.push(samples)
        utterance = self._current()
        limit = round(self.limits.max_buffer_s * SAMPLING_RATE)
        if utterance.num_samples + samples.shape[0] > limit:
            await self._error(
                "input_audio_buffer_too_large",
                f"The audio buffer is limited to {self.limits.max_buffer_s:g} s "
                "(--max-realtime-buffer-s); commit more often.",
            )
            raise CloseConnection(CLOSE_TOO_BIG, "audio buffer over the limit")
        utterance.add(samples)
        self.stream_samples += samples.shape[0]
        if self.vad is not None:
            await self._run_vad(samples)
        self._maybe_partial()

    async def _run_vad(self, samples: Any) -> None:
        for event in self.vad.push(samples):
            sample = self.vad_origin + event.sample
            utterance = self._current()
            if event.kind == "speech_started":
                utterance.keep_last(self.stream_samples - sample)
                await self._emit(
                    p.SpeechStarted(
                        audio_start_ms=sample * 1000 // SAMPLING_RATE, item_id=utterance.item_id
                    )
                )
            else:
                await self._emit(
                    p.SpeechStopped(
                        audio_end_ms=sample * 1000 // SAMPLING_RATE, item_id=utterance.item_id
                    )
                )
                await self._commit_utterance()
        if not self.vad.in_speech and self.utterance is not None:
            # Before speech only the prefix padding can still become part of an utterance.
            config = self.vad.config
            keep = (config.prefix_padding_ms + config.frame_ms) * SAMPLING_RATE // 1000
            self.utterance.keep_last(keep)

    def _partials_on(self) -> bool:
        if self.transcriber is None or self.pending_finals:
            return False
        if self.dialect == "vllm":
            return self.streaming
        return self.vad is None or self.vad.in_speech

    def _maybe_partial(self) -> None:
        utterance = self.utterance
        if utterance is None or not self._partials_on():
            return
        if self.partial_task is not None and not self.partial_task.done():
            return
        interval = self.limits.partial_interval_s * SAMPLING_RATE
        if utterance.num_samples - utterance.decoded_samples < interval:
            return
        assert self.transcriber is not None
        self.partial_task = asyncio.create_task(self._partial(utterance, self.transcriber))

    async def _partial(self, utterance: Utterance, transcriber: UtteranceTranscriber) -> None:
        try:
            delta = await transcriber.partial(utterance)
        except asyncio.CancelledError:
            raise
        except Exception:  # a partial is best effort; the final decode reports errors
            logger.exception("partial decode failed")
            return
        if delta:
            await self._emit_from_task(self._delta_event(utterance, delta))

    def _delta_event(self, utterance: Utterance, delta: str) -> BaseModel:
        if self.dialect == "openai":
            return p.InputTranscriptionDelta(item_id=utterance.item_id, delta=delta)
        return p.TranscriptionDelta(delta=delta)

    # ------------------------------------------------------------------ commits
    async def _commit(self, commit: p.InputAudioBufferCommit) -> None:
        if self.transcriber is None:
            raise EventError(
                "model_not_validated",
                "Send session.update with the model before committing audio.",
            )
        if self.dialect == "vllm" and not commit.final:
            self.streaming = True
            self._current()
            self._maybe_partial()
            return
        if self.dialect == "openai" and (self.utterance is None or not self.utterance.num_samples):
            raise EventError("input_audio_buffer_commit_empty", "The input audio buffer is empty.")
        self.streaming = False
        if self.vad is not None:
            self.vad.reset()
            self.vad_origin = self.stream_samples
        await self._commit_utterance()

    async def _commit_utterance(self) -> None:
        utterance = self._current()
        if self.pending_finals >= MAX_PENDING_COMMITS:
            raise EventError("processing_error", "Too many commits are waiting to be transcribed.")
        await self._stop_partial()
        if self.resampler is not None:  # the resampler's delayed tail belongs here
            utterance.add(self.resampler.flush())
            self.resampler = type(self.resampler)(
                self.resampler.orig_sampling_rate, self.resampler.target_sampling_rate
            )
        self.utterance = None
        if self.dialect == "openai":
            await self._emit(
                p.BufferCommitted(previous_item_id=self.previous_item_id, item_id=utterance.item_id)
            )
            self.previous_item_id = utterance.item_id
        assert self.transcriber is not None
        self.pending_finals += 1
        self.finals.put_nowait((utterance, self.transcriber))

    async def _stop_partial(self) -> None:
        task, self.partial_task = self.partial_task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _clear(self) -> None:
        await self._stop_partial()
        self.utterance = None
        if self.vad is not None:
            self.vad.reset()
            self.vad_origin = self.stream_samples
        if self.dialect == "openai":
            await self._emit(p.BufferCleared())

    async def _final_loop(self) -> None:
        while True:
            utterance, transcriber = await self.finals.get()
            try:
                transcript, delta = await transcriber.final(utterance)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.exception("final decode failed")
                message = exc.message if isinstance(exc, OpenAIError) else str(exc)
                await self._emit_from_task(self._error_event("processing_error", message))
            else:
                if delta:
                    await self._emit_from_task(self._delta_event(utterance, delta))
                await self._emit_from_task(self._done_event(utterance, transcript))
            finally:
                self.pending_finals -= 1

    def _done_event(self, utterance: Utterance, transcript: Transcript) -> BaseModel:
        if self.dialect == "openai":
            return p.InputTranscriptionCompleted(
                item_id=utterance.item_id,
                transcript=transcript.text,
                usage=p.DurationUsage(seconds=round(utterance.duration_s, 3)),
            )
        usage = UsageInfo(
            prompt_tokens=transcript.prompt_tokens,
            completion_tokens=transcript.completion_tokens,
            total_tokens=transcript.prompt_tokens + transcript.completion_tokens,
        )
        return p.TranscriptionDone(text=transcript.text, usage=usage)
