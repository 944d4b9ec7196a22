"""How a streamed transcription ends, on a scripted engine: every end is visible to the
client (the final chunk and usage, or an OpenAI error event, then `data: [DONE]`), refusals
come before the stream as HTTP errors, and every engine request is closed (aborted) whatever
ends the stream, a client that leaves included."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from typing import Any

import pytest
import torch

from mono_llm.core.errors import EngineDeadError, EngineError, EngineOverloadedError
from mono_llm.core.models.whisper_prompt import WhisperTokens
from mono_llm.core.outputs import CompletionOutput, RequestOutput
from mono_llm.openai_api.audio.protocol import TranscriptionRequest
from mono_llm.openai_api.audio.router import stream_events
from mono_llm.openai_api.audio.serving import AudioServing, Prepared, Upload
from mono_llm.openai_api.errors import OpenAIError
from mono_llm.openai_api.served_models import ServedModel, ServedModels
from mono_llm.openai_api.streaming import SSE_DONE, EventStreamResponse

PROMPT = [7, 8]  # what the scripted engine reports as each window's prompt


def _out(text: str, finish_reason: str | None = None) -> RequestOutput:
    completion = CompletionOutput(0, text, [1] * len(text.split()), finish_reason=finish_reason)
    return RequestOutput("r", None, PROMPT, None, [completion], finish_reason is not None)


class ScriptedEngine:
    """Plays one script per engine request, in order: outputs, exceptions to raise, or
    "hang" (wait until cancelled). Records which requests started and which were closed."""

    def __init__(self, *scripts: list[Any]) -> None:
        self.scripts = list(scripts)
        self.started: list[str] = []
        self.closed: list[str] = []

    async def generate(
        self, request: dict[str, Any], params: Any, request_id: str
    ) -> AsyncGenerator[RequestOutput, None]:
        assert "encoder_features" in request and params.max_tokens >= 1
        script = self.scripts.pop(0)
        self.started.append(request_id)
        try:
            for step in script:
                if isinstance(step, BaseException):
                    raise step
                if step == "hang":
                    await asyncio.Event().wait()
                yield step
        finally:
            self.closed.append(request_id)


def _prepared(engine: ScriptedEngine, windows: int, **fields: str) -> tuple[AudioServing, Prepared]:
    model = ServedModel(
        engine=engine,  # type: ignore[arg-type]
        names=["w"],
        chat_template=None,  # type: ignore[arg-type]
        root="/nowhere",
        max_model_len=64,
    )
    serving = AudioServing(ServedModels([model]), max_file_bytes=1 << 20, max_duration_s=60.0)
    tokens = WhisperTokens(  # an English-only checkpoint's layout
        start_of_transcript=1,
        end_of_text=0,
        transcribe=None,
        translate=None,
        no_timestamps=2,
        start_of_prev=3,
        no_speech=None,
        timestamp_begin=100,
    )
    request = TranscriptionRequest.model_validate({"model": "w", "stream": "true", **fields})
    prepared = Prepared(
        Upload(request, b"", model),
        tokens,
        torch.zeros(windows, 80, 8),
        [30.0 * i for i in range(windows)],
        [30.0] * windows,
        30.0 * windows,
        "en",
        [],
    )
    return serving, prepared


def _events(engine: ScriptedEngine, windows: int = 1, **fields: str) -> list[Any]:
    """The SSE body of one streamed transcription: decoded events, and "[DONE]"."""
    serving, prepared = _prepared(engine, windows, **fields)

    async def run() -> list[str]:
        body = await stream_events(serving, prepared, "transcribe")
        return [event async for event in body]

    raw = asyncio.run(run())
    assert all(e.startswith("data: ") and e.endswith("\n\n") for e in raw), raw
    return [e[6:-2] if e == SSE_DONE else json.loads(e[6:-2]) for e in raw]


def _texts(events: list[Any]) -> list[str]:
    return [
        e["choices"][0]["delta"]["content"] for e in events if e != "[DONE]" and e.get("choices")
    ]


def test_a_normal_stream_ends_with_the_final_chunk_usage_and_done() -> None:
    engine = ScriptedEngine(
        [_out("Hello"), _out(" there", "stop")], [_out(" Again"), _out("", "length")]
    )
    events = _events(engine, windows=2, stream_include_usage="true")
    assert _texts(events) == ["Hello", " there", " Again", None]
    assert events[-3]["choices"][0]["finish_reason"] == "length"
    assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] == 3
    assert events[-2]["usage"]["prompt_tokens"] == 2 * len(PROMPT)
    assert events[-1] == "[DONE]"
    assert engine.closed == engine.started and len(engine.started) == 2


@pytest.mark.parametrize(
    ("failure", "code", "kind"),
    [
        (
            EngineError("The request failed inside the engine: simulated"),
            500,
            "InternalServerError",
        ),
        (EngineDeadError("The engine has stopped: simulated"), 503, "ServiceUnavailableError"),
    ],
)
def test_a_failure_after_the_first_chunk_is_an_error_event_then_done(
    failure: Exception, code: int, kind: str
) -> None:
    engine = ScriptedEngine([_out("Hello"), failure], [_out("never")])
    events = _events(engine, windows=2, stream_include_usage="true")
    assert _texts(events) == ["Hello"]
    assert events[-1] == "[DONE]"
    assert events[-2] == {
        "error": {"message": str(failure), "type": kind, "param": None, "code": code}
    }
    assert len(events) == 3  # no final chunk or usage: the transcript is not complete
    assert engine.closed == engine.started and len(engine.started) == 1


def test_a_later_window_refused_by_the_engine_ends_the_stream_in_band() -> None:
    engine = ScriptedEngine([_out("Hello", "stop")], [EngineOverloadedError("queue is full")])
    events = _events(engine, windows=2)
    assert _texts(events) == ["Hello"]
    assert events[-2]["error"]["code"] == 503 and "queue is full" in events[-2]["error"]["message"]
    assert events[-1] == "[DONE]" and engine.closed == engine.started


def test_an_aborted_window_ends_the_stream_with_finish_reason_abort() -> None:
    engine = ScriptedEngine([_out("Hel"), _out("", "abort")], [_out("never")])
    events = _events(engine, windows=2)
    assert _texts(events) == ["Hel", None]
    assert events[-2]["choices"][0]["finish_reason"] == "abort" and events[-1] == "[DONE]"
    assert len(engine.started) == 1 and engine.closed == engine.started


def test_refusals_before_the_first_output_are_http_errors_not_streams() -> None:
    engine = ScriptedEngine([EngineOverloadedError("queue is full")])
    serving, prepared = _prepared(engine, 1)
    with pytest.raises(EngineOverloadedError):
        asyncio.run(stream_events(serving, prepared, "transcribe"))
    assert engine.closed == engine.started and len(engine.started) == 1
    serving, prepared = _prepared(ScriptedEngine(), 1)
    prepared.previous = list(range(200, 270))  # a previous-text prompt past the 64 tokens
    with pytest.raises(OpenAIError) as info:
        asyncio.run(stream_events(serving, prepared, "transcribe"))
    assert info.value.status == 400 and info.value.param == "prompt"
    assert "no room" in info.value.message


def test_a_client_that_leaves_mid_stream_aborts_the_window_being_decoded() -> None:
    engine = ScriptedEngine([_out("Hello"), "hang"], [_out("never")])
    serving, prepared = _prepared(engine, 2)

    async def run() -> str:
        response = EventStreamResponse(await stream_events(serving, prepared, "transcribe"))
        body = response.body_iterator
        first = await body.__anext__()
        await body.aclose()  # what Starlette does when the client disconnects
        for _ in range(100):
            if engine.closed:
                break
            await asyncio.sleep(0.01)
        return first

    first = asyncio.run(run())
    assert json.loads(first[6:])["choices"][0]["delta"]["content"] == "Hello"
    assert engine.closed == engine.started and len(engine.started) == 1


def test_closing_the_stream_between_chunks_aborts_the_window_at_once() -> None:
    """Not left to garbage collection: the engine request is closed by the time aclose()
    returns."""
    engine = ScriptedEngine([_out("Hello"), _out(" there"), _out("", "stop")], [_out("never")])
    serving, prepared = _prepared(engine, 2)

    async def run() -> list[str]:
        body = await stream_events(serving, prepared, "transcribe")
        await body.__anext__()
        await body.aclose()
        return list(engine.closed)

    closed_when_aclose_returned = asyncio.run(run())
    assert closed_when_aclose_returned == engine.started and len(engine.started) == 1
