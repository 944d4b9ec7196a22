"""Thin HTTP layer of POST /v1/audio/transcriptions and POST /v1/audio/translations."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from mono_llm.core.models.whisper_prompt import language_name
from mono_llm.core.outputs import RequestOutput
from mono_llm.openai_api.audio.formats import to_srt, to_vtt
from mono_llm.openai_api.audio.protocol import (
    DeltaText,
    TranscriptionResponse,
    TranscriptionStreamChoice,
    TranscriptionStreamResponse,
    TranscriptionUsage,
    TranscriptionVerboseResponse,
)
from mono_llm.openai_api.audio.serving import AudioServing, Prepared, usage_seconds
from mono_llm.openai_api.errors import ErrorResponse, OpenAIError
from mono_llm.openai_api.server_state import server_state
from mono_llm.openai_api.streaming import EventStreamResponse, unless_disconnected

router = APIRouter(tags=["audio"])

ERROR_RESPONSES: dict[int | str, dict] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 500, 501, 503)
}
_FORM_BODY = {
    "requestBody": {
        "content": {"multipart/form-data": {"schema": {"type": "object", "required": ["file"]}}}
    }
}


def _serving(raw: Request) -> AudioServing:
    serving = server_state(raw).audio
    if serving is None:
        raise OpenAIError("No served model supports audio transcription.", 404)
    return serving


@router.post("/v1/audio/transcriptions", responses=ERROR_RESPONSES, openapi_extra=_FORM_BODY)
async def create_transcription(raw_request: Request) -> Response:
    """Transcribe an uploaded audio file (multipart form: file, model, language, ...)."""
    return await _handle(raw_request, "transcribe")


@router.post("/v1/audio/translations", responses=ERROR_RESPONSES, openapi_extra=_FORM_BODY)
async def create_translation(raw_request: Request) -> Response:
    """Translate the speech of an uploaded audio file into English text."""
    return await _handle(raw_request, "translate")


async def _handle(raw: Request, task: str) -> Response:
    serving = _serving(raw)
    upload = await serving.parse(raw)
    prepared = await serving.prepare(upload, task)
    request = upload.request
    if request.stream:
        return EventStreamResponse(await stream_events(serving, prepared, task))
    fmt = request.response_format
    timestamps = fmt in ("srt", "vtt", "verbose_json")
    transcript = await unless_disconnected(
        raw, serving.transcribe(prepared, task, timestamps=timestamps)
    )
    if transcript is None:  # the client left
        return Response(status_code=499)
    usage = TranscriptionUsage(seconds=usage_seconds(transcript.duration_s))
    if fmt == "text":
        return PlainTextResponse(transcript.text + "\n")
    if fmt == "srt":
        return PlainTextResponse(to_srt(transcript.segments))
    if fmt == "vtt":
        return PlainTextResponse(to_vtt(transcript.segments), media_type="text/vtt")
    if fmt == "verbose_json":
        body = TranscriptionVerboseResponse(
            task="translate" if task == "translate" else "transcribe",
            language=language_name(transcript.language),
            duration=round(transcript.duration_s, 3),
            text=transcript.text,
            segments=transcript.segments,
            usage=usage,
        )
        return JSONResponse(body.model_dump())
    return JSONResponse(TranscriptionResponse(text=transcript.text, usage=usage).model_dump())


async def stream_events(
    serving: AudioServing, prepared: Prepared, task: str
) -> AsyncGenerator[str, None]:
    """Start a streamed transcription and return its server-sent-event body.

    Refusals (a prompt with no room, an overloaded or dead engine) raise here, while they
    can still be HTTP errors. Once the stream has started, every end is visible to the
    client: the final chunk (and usage) then `data: [DONE]`; or an OpenAI-shaped error
    event then `data: [DONE]` (ServingBase.sse_stream); a client that leaves aborts the
    window being decoded.
    """
    windows = await serving.start_stream(prepared, task)
    return serving.sse_stream(_chunks(serving, prepared, task, windows), windows.aclose)


async def _chunks(
    serving: AudioServing,
    prepared: Prepared,
    task: str,
    windows: AsyncIterator[tuple[str, RequestOutput]],
) -> AsyncGenerator[TranscriptionStreamResponse, None]:
    """The stream's chunks: text deltas, the finish reason, then usage when asked."""
    request = prepared.upload.request
    model = prepared.upload.model.name
    kind = "translation.chunk" if task == "translate" else "transcription.chunk"
    chunk_id = TranscriptionStreamResponse(model=model).id

    def chunk(**fields: Any) -> TranscriptionStreamResponse:
        """One chunk of this stream (its id, kind and model on every chunk)."""
        return TranscriptionStreamResponse(id=chunk_id, object=kind, model=model, **fields)

    prompt_tokens = completion_tokens = 0
    finish_reason = stop_reason = None
    async for delta, out in windows:
        completion_tokens += len(out.outputs[0].token_ids)
        if out.finished:
            prompt_tokens += len(out.prompt_token_ids)
            finish_reason, stop_reason = out.outputs[0].finish_reason, out.outputs[0].stop_reason
        if not delta:
            continue
        usage = None
        if request.stream_include_usage and request.stream_continuous_usage_stats:
            usage = serving.usage(prompt_tokens, completion_tokens)
        yield chunk(
            choices=[TranscriptionStreamChoice(delta=DeltaText(content=delta))], usage=usage
        )
    done = TranscriptionStreamChoice(
        delta=DeltaText(), finish_reason=finish_reason, stop_reason=stop_reason
    )
    yield chunk(choices=[done])
    if request.stream_include_usage:
        yield chunk(usage=serving.usage(prompt_tokens, completion_tokens))
