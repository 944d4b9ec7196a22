"""Turns an uploaded audio file into Whisper requests on the engine, and their outputs back.

One upload: decode and resample (mono_llm.audio, imported only here and only when a request
comes), split into windows of at most 30 s at quiet points, log-mel features for every window
at once, then one engine request per window, all submitted together so the engine batches
them; their texts are joined and their timestamped segments shifted to the clip's time.
Without a language, the first window's language is detected by the model (one decoder step
restricted to the language tokens) and used for every window.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import Request

from mono_llm.core.models.registry import supports_transcription
from mono_llm.core.models.whisper_prompt import (
    Segment,
    WhisperTokens,
    compression_ratio,
    split_timed,
)
from mono_llm.core.outputs import RequestOutput
from mono_llm.core.sampling_params import RequestOutputKind, SamplingParams
from mono_llm.openai_api.audio.protocol import TranscriptionRequest
from mono_llm.openai_api.engine_requests import await_first_output
from mono_llm.openai_api.errors import OpenAIError
from mono_llm.openai_api.served_models import ServedModel, ServedModels
from mono_llm.openai_api.serving_base import ServingBase

AUDIO_EXTRA_HINT = "pip install mono-llm[audio]"
# Form fields besides the file; more is a malformed or hostile request.
_MAX_FORM_FIELDS = 64
# Multipart framing and text fields beyond the file itself.
_FORM_OVERHEAD_BYTES = 1024 * 1024


def import_audio() -> Any:
    """mono_llm.audio, or a clear error naming the extra that installs it."""
    try:
        import mono_llm.audio as audio
    except ImportError as exc:
        raise OpenAIError(
            f"Audio endpoints need the audio extra, which is not installed: {AUDIO_EXTRA_HINT}",
            501,
        ) from exc
    return audio


@dataclass(slots=True)
class Upload:
    """A parsed request: its fields, the file's bytes and its served model."""

    request: TranscriptionRequest
    data: bytes
    model: ServedModel


@dataclass(slots=True)
class WindowResult:
    """One window's decoding."""

    start_s: float
    duration_s: float
    token_ids: list[int]
    logprobs: list[float]
    no_speech_prob: float
    finish_reason: str | None


@dataclass(slots=True)
class Transcript:
    text: str
    language: str
    duration_s: float
    segments: list[Segment]
    prompt_tokens: int = 0  # decoder prompt tokens, over every window
    completion_tokens: int = 0


@dataclass(slots=True)
class Prepared:
    """Everything the engine needs for one upload, ready to submit."""

    upload: Upload
    tokens: WhisperTokens
    features: torch.Tensor  # [windows, n_mels, frames] float32
    window_starts: list[float]
    window_durations: list[float]
    duration_s: float
    language: str | None
    previous: list[int]


class AudioServing(ServingBase):
    """Serves /v1/audio/transcriptions and /v1/audio/translations."""

    def __init__(
        self, registry: ServedModels, *, max_file_bytes: int, max_duration_s: float
    ) -> None:
        super().__init__(registry)
        self.max_file_bytes = max_file_bytes
        self.max_duration_s = max_duration_s
        self._tokens: dict[str, WhisperTokens] = {}

    # ------------------------------------------------------------------ request parsing
    async def parse(self, raw: Request) -> Upload:
        """Read the multipart form within the upload limit; 4xx for anything malformed."""
        limit = self.max_file_bytes
        declared = raw.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit + _FORM_OVERHEAD_BYTES:
            raise OpenAIError(_too_large(int(declared), limit), 413, param="file")
        content_type = raw.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise OpenAIError(
                "Send the audio as multipart/form-data with a `file` field.", 400, param="file"
            )
        form = await raw.form(max_files=1, max_fields=_MAX_FORM_FIELDS)
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise OpenAIError(
                    "The `file` field (the audio file) is missing.", 400, param="file"
                )
            data = await upload.read(limit + 1)
            if len(data) > limit:
                raise OpenAIError(_too_large(len(data), limit), 413, param="file")
            fields: dict[str, Any] = {"timestamp_granularities": []}
            for key, value in form.multi_items():
                if key == "file" or not isinstance(value, str):
                    continue
                if key in ("timestamp_granularities[]", "timestamp_granularities"):
                    fields["timestamp_granularities"].append(value)
                else:
                    fields[key] = value
        finally:
            await form.close()
        try:
            request = TranscriptionRequest.model_validate(fields)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first["loc"]) or None
            raise OpenAIError(f"{param}: {first['msg']}", 400, param=param) from exc
        if "word" in request.timestamp_granularities:
            raise OpenAIError(
                "timestamp_granularities=word is not supported (no word alignment); use segment.",
                400,
                param="timestamp_granularities",
            )
        model = self.resolve_model(request.model)
        if not supports_transcription(model.engine.model_config.architectures):
            raise OpenAIError(
                f"The model `{model.name}` does not support transcription.", 400, param="model"
            )
        return Upload(request, data, model)

    # ------------------------------------------------------------------ preparation
    def tokens_of(self, model: ServedModel) -> WhisperTokens:
        tokens = self._tokens.get(model.name)
        if tokens is None:
            tokens = WhisperTokens.from_tokenizer(model.tokenizer, model.root)
            self._tokens[model.name] = tokens
        return tokens

    def check_task(self, request: TranscriptionRequest, model: ServedModel, task: str) -> None:
        """400 unless the model can do `task` in the requested language."""
        tokens = self.tokens_of(model)
        language = request.language
        if language is not None and tokens.is_multilingual and language not in tokens.languages:
            raise OpenAIError(
                f"Unsupported language {language!r}; supported: "
                f"{', '.join(sorted(tokens.languages))}.",
                400,
                param="language",
            )
        if not tokens.is_multilingual:
            if task == "translate":
                raise OpenAIError(
                    f"The model `{model.name}` is an English-only Whisper checkpoint and cannot "
                    "translate; serve a multilingual one.",
                    400,
                    param="model",
                )
            if language not in (None, "en"):
                raise OpenAIError(
                    f"The model `{model.name}` is English-only; language must be en.",
                    400,
                    param="language",
                )

    def feature_config(self, model: ServedModel) -> Any:
        """The model's log-mel settings (its preprocessor_config.json)."""
        return import_audio().WhisperFeatureConfig.from_preprocessor_config(_preprocessor(model))

    def prepare_samples(self, upload: Upload, samples: Any, duration_s: float) -> Prepared:
        """Prepared from float32 mono samples at the model's rate (a decoded file, or a
        realtime stream's buffer): split into windows, log-mel features, the prompt's tokens.
        CPU-heavy for long audio: call it off the event loop."""
        audio = import_audio()
        request, model = upload.request, upload.model
        config = self.feature_config(model)
        windows = audio.split_audio(samples, config.sampling_rate)
        clips = [w.slice(samples) for w in windows]
        features = audio.log_mel_spectrogram(clips, config, device="cpu")
        starts = [w.start_s(config.sampling_rate) for w in windows]
        durations = [w.num_samples / config.sampling_rate for w in windows]
        previous: list[int] = []
        if request.prompt.strip():
            previous = model.tokenizer.encode(
                " " + request.prompt.strip(), add_special_tokens=False
            )
        return Prepared(
            upload,
            self.tokens_of(model),
            features,
            starts,
            durations,
            duration_s,
            request.language,
            previous,
        )

    async def prepare(self, upload: Upload, task: str) -> Prepared:
        """Decode, split and featurize the audio; validate language, task and prompt."""
        audio = import_audio()
        self.check_task(upload.request, upload.model, task)
        limits = audio.AudioLimits(
            max_bytes=self.max_file_bytes, max_duration_s=self.max_duration_s
        )
        sampling_rate = self.feature_config(upload.model).sampling_rate

        def decode() -> Prepared:
            decoded = audio.decode_audio(upload.data, sampling_rate=sampling_rate, limits=limits)
            return self.prepare_samples(upload, decoded.samples, decoded.duration_s)

        try:
            return await asyncio.to_thread(decode)
        except audio.AudioTooLargeError as exc:
            raise OpenAIError(str(exc), 413, param="file") from exc
        except audio.AudioError as exc:
            raise OpenAIError(f"Could not read the audio file: {exc}", 400, param="file") from exc

    # ------------------------------------------------------------------ engine calls
    def sampling_params(
        self, prepared: Prepared, prompt_len: int, kind: RequestOutputKind
    ) -> SamplingParams:
        request = prepared.upload.request
        model = prepared.upload.model
        room = model.max_model_len - prompt_len
        max_tokens = min(request.max_completion_tokens or room, room)
        if max_tokens < 1:
            raise OpenAIError("The prompt leaves no room for the transcript.", 400, param="prompt")
        return SamplingParams(
            temperature=request.temperature,
            top_p=request.top_p if request.top_p is not None else 1.0,
            top_k=request.top_k or 0,
            min_p=request.min_p or 0.0,
            frequency_penalty=request.frequency_penalty or 0.0,
            presence_penalty=request.presence_penalty or 0.0,
            repetition_penalty=request.repetition_penalty or 1.0,
            seed=request.seed,
            max_tokens=max_tokens,
            logprobs=0,
            logit_bias=prepared.tokens.logit_bias(),
            skip_special_tokens=True,
            output_kind=kind,
        )

    async def _probe(
        self, model: ServedModel, features: torch.Tensor, prefix: list[int], allowed: list[int]
    ) -> tuple[int, float]:
        """One decoder step from `prefix` restricted to `allowed`: (token, its probability
        under the unrestricted distribution)."""
        params = SamplingParams(
            max_tokens=1,
            temperature=0.0,
            allowed_token_ids=allowed,
            logprobs=0,
            detokenize=False,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        final = await _final(
            model, {"encoder_features": features, "prompt_token_ids": prefix}, params
        )
        output = final.outputs[0]
        token = output.token_ids[0]
        logprob = output.logprobs[0][token].logprob if output.logprobs else float("-inf")
        return token, math.exp(logprob)

    async def detect_language(self, prepared: Prepared) -> str:
        """The language the model hears in the first window (English-only models: en)."""
        tokens = prepared.tokens
        if prepared.language is not None:
            return prepared.language
        if not tokens.is_multilingual:
            return "en"
        by_id = {v: k for k, v in tokens.languages.items()}
        token, _ = await self._probe(
            prepared.upload.model,
            prepared.features[0],
            [tokens.start_of_transcript],
            list(by_id),
        )
        return by_id[token]

    async def no_speech_prob(self, prepared: Prepared, index: int) -> float:
        """P(<|nospeech|>) right after <|startoftranscript|>, as OpenAI's Whisper reports it."""
        tokens = prepared.tokens
        if tokens.no_speech is None:
            return 0.0
        _, prob = await self._probe(
            prepared.upload.model,
            prepared.features[index],
            [tokens.start_of_transcript],
            [tokens.no_speech],
        )
        return prob

    async def transcribe(self, prepared: Prepared, task: str, *, timestamps: bool) -> Transcript:
        """Every window decoded in one batch; texts joined, segments on the clip's clock."""
        language = await self.detect_language(prepared)
        tokens, model = prepared.tokens, prepared.upload.model
        prompt = tokens.decoder_prompt(
            language=language, task=task, timestamps=timestamps, previous=prepared.previous
        )
        params = self.sampling_params(prepared, len(prompt), RequestOutputKind.FINAL_ONLY)
        num_windows = prepared.features.shape[0]

        async def window(index: int) -> WindowResult:
            request = {"encoder_features": prepared.features[index], "prompt_token_ids": prompt}
            final, no_speech = await asyncio.gather(
                _final(model, request, params),
                self.no_speech_prob(prepared, index)
                if timestamps
                else asyncio.sleep(0, result=0.0),
            )
            output = final.outputs[0]
            logprobs = [
                entry[token].logprob
                for entry, token in zip(output.logprobs or [], output.token_ids, strict=False)
            ]
            return WindowResult(
                prepared.window_starts[index],
                prepared.window_durations[index],
                output.token_ids,
                logprobs,
                no_speech,
                output.finish_reason,
            )

        results = await asyncio.gather(*(window(i) for i in range(num_windows)))
        segments = _segments(results, tokens, model.tokenizer, prepared.upload.request.temperature)
        audio = import_audio()
        texts = [
            model.tokenizer.decode(
                [t for t in r.token_ids if t < tokens.end_of_text], skip_special_tokens=True
            )
            for r in results
        ]
        return Transcript(
            audio.join_transcripts(texts),
            language,
            prepared.duration_s,
            segments,
            prompt_tokens=len(prompt) * num_windows,
            completion_tokens=sum(len(r.token_ids) for r in results),
        )

    async def start_stream(
        self, prepared: Prepared, task: str
    ) -> AsyncGenerator[tuple[str, RequestOutput], None]:
        """Start a streamed decoding; the returned generator yields (window text delta,
        output) as the windows decode, in window order.

        Everything that can refuse the request (the language probe, a prompt that leaves no
        room, the engine's validation, overload or death) raises here, while the response can
        still carry its status: the first window is submitted and its first output awaited.
        What fails later can only be reported in the stream. Closing the generator aborts
        the window it is decoding.
        """
        language = await self.detect_language(prepared)
        tokens, model = prepared.tokens, prepared.upload.model
        prompt = tokens.decoder_prompt(
            language=language, task=task, timestamps=False, previous=prepared.previous
        )
        params = self.sampling_params(prepared, len(prompt), RequestOutputKind.DELTA)

        def submit(index: int) -> Awaitable[AsyncGenerator[RequestOutput, None]]:
            request = {"encoder_features": prepared.features[index], "prompt_token_ids": prompt}
            return _start(model, request, params)

        first = await submit(0)
        return _window_deltas(first, submit, prepared.features.shape[0])


async def _start(
    model: ServedModel, request: dict[str, Any], params: SamplingParams
) -> AsyncGenerator[RequestOutput, None]:
    """Submit one engine request and wait for its first output (refusals raise here)."""
    generator = model.engine.generate(request, params, f"trsc-{uuid.uuid4().hex}")
    return await await_first_output(generator)


async def _window_deltas(
    first: AsyncGenerator[RequestOutput, None],
    submit: Callable[[int], Awaitable[AsyncGenerator[RequestOutput, None]]],
    num_windows: int,
) -> AsyncGenerator[tuple[str, RequestOutput], None]:
    """(text delta, output) of each window in turn; windows after the first are submitted
    when the one before finishes. An aborted window (the engine stopping) ends the stream
    with it: its finish_reason "abort" is what the client sees last."""
    outputs: AsyncGenerator[RequestOutput, None] | None = first
    for index in range(num_windows):
        if outputs is None:
            outputs = await submit(index)
        separator = " " if index else ""
        finish_reason = None
        async with contextlib.aclosing(outputs):
            async for out in outputs:
                delta = out.outputs[0].text
                if separator and delta:
                    delta, separator = separator + delta.lstrip(), ""
                finish_reason = out.outputs[0].finish_reason
                yield delta, out
        outputs = None
        if finish_reason == "abort":
            return


async def warm_up_transcription(model: ServedModel) -> None:
    """One decoder step on silent features: the encoder and decoder both run once."""
    config = model.engine.model_config.hf_config
    features = torch.zeros(
        config.get("num_mel_bins", 80), 2 * config.get("max_source_positions", 1500)
    )
    tokens = WhisperTokens.from_tokenizer(model.tokenizer, model.root)
    params = SamplingParams(max_tokens=1, temperature=0.0, output_kind=RequestOutputKind.FINAL_ONLY)
    await _final(
        model,
        {"encoder_features": features, "prompt_token_ids": [tokens.start_of_transcript]},
        params,
    )


async def _final(
    model: ServedModel, request: dict[str, Any], params: SamplingParams
) -> RequestOutput:
    final = None
    async for out in model.engine.generate(request, params, f"trsc-{uuid.uuid4().hex}"):
        final = out
    assert final is not None
    return final


def _segments(
    results: list[WindowResult], tokens: WhisperTokens, tokenizer: Any, temperature: float
) -> list[Segment]:
    segments: list[Segment] = []
    for result in results:
        text_ids = [t for t in result.token_ids if t < tokens.end_of_text]
        window_text = tokenizer.decode(text_ids, skip_special_tokens=True)
        avg = sum(result.logprobs) / len(result.logprobs) if result.logprobs else 0.0
        ratio = compression_ratio(window_text)
        seek = round(result.start_s * 100)  # OpenAI counts seek in 10 ms mel frames
        for start, end, ids in split_timed(result.token_ids, tokens, result.duration_s):
            text = tokenizer.decode(ids, skip_special_tokens=True)
            if not text.strip():
                continue
            segments.append(
                Segment(
                    id=len(segments),
                    seek=seek,
                    start=round(result.start_s + start, 3),
                    end=round(result.start_s + end, 3),
                    text=text,
                    tokens=ids,
                    temperature=temperature,
                    avg_logprob=avg,
                    compression_ratio=ratio,
                    no_speech_prob=result.no_speech_prob,
                )
            )
    return segments


def _preprocessor(model: ServedModel) -> dict[str, Any] | str:
    from pathlib import Path

    path = Path(model.root) / "preprocessor_config.json"
    if path.is_file():
        return str(path)
    return {"feature_size": model.engine.model_config.hf_config.get("num_mel_bins", 80)}


def _too_large(size: int, limit: int) -> str:
    return (
        f"The audio file is {size / 1024**2:.1f} MB, over the {limit / 1024**2:.0f} MB limit "
        "(--max-audio-file-size-mb)."
    )


def usage_seconds(duration_s: float) -> int:
    return max(1, math.ceil(duration_s))
