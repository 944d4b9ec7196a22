"""Incremental transcription of one utterance: partial text while audio arrives, then the
offline transcription of the whole utterance.

Whisper is not a streaming model, so partial text comes from re-decoding the growing audio
(Whisper-streaming's local agreement): every `interval` of new audio the utterance so far is
decoded again, and the words on which the last two decodes agree (their common prefix) are
final enough to send. Audio longer than one 30 s window is split as the file endpoint splits
it (`split_audio`); its windows before the last never change once more audio follows, so
their text is decoded once and cached, and each partial decode costs one window.

The final decode is the file endpoint's own (`AudioServing.prepare_samples` + `transcribe`)
over the whole utterance, so the final text equals /v1/audio/transcriptions on the same audio.
Its last delta completes the sent prefix to that text. Every decode is an ordinary engine
request, batched with every other session's and request's.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

import numpy as np

from mono_llm.openai_api.audio.protocol import TranscriptionRequest
from mono_llm.openai_api.audio.serving import AudioServing, Transcript, Upload, import_audio
from mono_llm.openai_api.served_models import ServedModel

SAMPLING_RATE = 16000
# Shorter audio decodes to noise ("you", "Thank you."): no partials before this much.
MIN_PARTIAL_S = 1.0
_WORD = re.compile(r"\s*\S+")


def _words(text: str) -> list[str]:
    """Words with their leading whitespace, so joining a prefix gives a prefix of the text."""
    return _WORD.findall(text)


@dataclass(slots=True)
class Utterance:
    """The audio of one utterance (16 kHz float32) and what was sent of its text."""

    item_id: str
    chunks: list[np.ndarray] = field(default_factory=list)
    num_samples: int = 0
    start_sample: int = 0  # offset of the first sample in the session's stream
    sent: str = ""  # the text sent as deltas so far
    previous_words: list[str] = field(default_factory=list)  # the last partial decode
    decoded_samples: int = 0  # audio length at the last partial decode
    window_texts: dict[tuple[int, int], str] = field(default_factory=dict)

    def add(self, samples: np.ndarray) -> None:
        if samples.size:
            self.chunks.append(samples)
            self.num_samples += samples.shape[0]

    def samples(self) -> np.ndarray:
        if not self.chunks:
            return np.zeros(0, dtype=np.float32)
        if len(self.chunks) > 1:
            self.chunks = [np.concatenate(self.chunks)]
        return self.chunks[0]

    def keep_last(self, num_samples: int) -> None:
        """Drop all but the last `num_samples` (silence before speech, under server VAD)."""
        drop = self.num_samples - num_samples
        if drop <= 0:
            return
        self.chunks = [self.samples()[drop:]]
        self.num_samples -= drop
        self.start_sample += drop

    @property
    def duration_s(self) -> float:
        return self.num_samples / SAMPLING_RATE


class UtteranceTranscriber:
    """Decodes utterances for one session's model, language and prompt."""

    def __init__(
        self, serving: AudioServing, model: ServedModel, language: str | None, prompt: str
    ) -> None:
        self.serving = serving
        self.model = model
        self.request = TranscriptionRequest(model=model.name, language=language, prompt=prompt)
        serving.check_task(self.request, model, "transcribe")

    def _upload(self) -> Upload:
        return Upload(self.request, b"", self.model)

    async def _decode(self, samples: np.ndarray) -> Transcript:
        prepared = await asyncio.to_thread(
            self.serving.prepare_samples, self._upload(), samples, samples.shape[0] / SAMPLING_RATE
        )
        return await self.serving.transcribe(prepared, "transcribe", timestamps=False)

    async def partial(self, utterance: Utterance) -> str:
        """Decode the utterance so far; return the newly agreed text (maybe empty)."""
        audio = import_audio()
        samples = utterance.samples()
        utterance.decoded_samples = samples.shape[0]
        if samples.shape[0] < MIN_PARTIAL_S * SAMPLING_RATE:
            return ""
        windows = audio.split_audio(samples, SAMPLING_RATE)
        texts: list[str] = []
        for index, window in enumerate(windows):
            key = (window.start, window.end)
            cached = utterance.window_texts.get(key)
            if cached is None:
                cached = (await self._decode(window.slice(samples))).text
                if index < len(windows) - 1:  # a window with audio after it never changes
                    utterance.window_texts[key] = cached
            texts.append(cached)
        words = _words(audio.join_transcripts(texts))
        agreed: list[str] = []
        for mine, theirs in zip(words, utterance.previous_words, strict=False):
            if mine != theirs:
                break
            agreed.append(mine)
        utterance.previous_words = words
        text = "".join(agreed)
        if len(text) <= len(utterance.sent) or not text.startswith(utterance.sent):
            return ""
        delta = text[len(utterance.sent) :]
        utterance.sent = text
        return delta

    async def final(self, utterance: Utterance) -> tuple[Transcript, str]:
        """The offline transcription of the whole utterance and the delta completing the sent
        text to it. If the final decode revised a word already sent (the rest of the audio
        changed how Whisper hears its start), no delta can complete the sent text: the delta
        is empty and the final text (authoritative) differs from the concatenated deltas."""
        if not utterance.num_samples:
            return Transcript("", self.request.language or "", 0.0, []), ""
        transcript = await self._decode(utterance.samples())
        text = transcript.text
        delta = text[len(utterance.sent) :] if text.startswith(utterance.sent) else ""
        utterance.sent = text
        return transcript, delta
