"""Energy-based voice-activity detection for server-side turn detection.

A realtime endpoint needs to know when the speaker starts and when they have stopped (then it
commits the buffer and transcribes). Frame loudness against a fixed dBFS threshold, with
hysteresis in time: speech starts after `min_speech_ms` of loud frames and stops after
`silence_ms` of quiet ones, the parameters OpenAI's `server_vad` exposes. It is not a neural
VAD: steady loud noise counts as speech. It costs microseconds per frame and no model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from mono_llm.audio.resample import WHISPER_SAMPLING_RATE


@dataclass(frozen=True, slots=True)
class VADConfig:
    threshold_db: float = -40.0
    """Frames whose RMS level is above this (dB relative to full scale) are voiced."""
    frame_ms: int = 30
    min_speech_ms: int = 90
    """Voiced audio needed before speech counts as started (ignores clicks)."""
    silence_ms: int = 500
    """Unvoiced audio needed before speech counts as stopped (the end of a turn)."""
    prefix_padding_ms: int = 300
    """How far before the first voiced frame a `speech_started` event points."""

    def __post_init__(self) -> None:
        if self.frame_ms <= 0 or self.min_speech_ms < 0 or self.silence_ms <= 0:
            raise ValueError(f"invalid VAD timing: {self}")
        if self.prefix_padding_ms < 0:
            raise ValueError("prefix_padding_ms must be >= 0")


@dataclass(frozen=True, slots=True)
class VADEvent:
    kind: Literal["speech_started", "speech_stopped"]
    sample: int
    """Offset in the stream: where speech starts (minus the prefix padding), or where the
    silence that ended it began."""

    def time_s(self, sampling_rate: int = WHISPER_SAMPLING_RATE) -> float:
        return self.sample / sampling_rate


class EnergyVAD:
    """Feed samples with `push`; it returns the events they complete, in order."""

    def __init__(
        self, sampling_rate: int = WHISPER_SAMPLING_RATE, config: VADConfig | None = None
    ) -> None:
        self.sampling_rate = sampling_rate
        self.config = config or VADConfig()
        self._frame = max(sampling_rate * self.config.frame_ms // 1000, 1)
        self._speech_frames_needed = max(-(-self.config.min_speech_ms // self.config.frame_ms), 1)
        self._silence_frames_needed = -(-self.config.silence_ms // self.config.frame_ms)
        self._prefix = sampling_rate * self.config.prefix_padding_ms // 1000
        self.reset()

    def reset(self) -> None:
        self._pending = np.zeros(0, dtype=np.float32)
        self._offset = 0  # stream offset of self._pending[0]
        self.in_speech = False
        self._run = 0  # consecutive frames contradicting the current state
        self._run_start = 0

    def push(self, samples: np.ndarray) -> list[VADEvent]:
        samples = np.asarray(samples, dtype=np.float32)
        buffered = np.concatenate((self._pending, samples))
        num_frames = buffered.shape[0] // self._frame
        frames = buffered[: num_frames * self._frame].reshape(num_frames, self._frame)
        rms = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))
        voiced = 20.0 * np.log10(np.maximum(rms, 1e-10)) > self.config.threshold_db
        events: list[VADEvent] = []
        for index, is_voiced in enumerate(voiced.tolist()):
            frame_start = self._offset + index * self._frame
            if is_voiced != self.in_speech:
                if self._run == 0:
                    self._run_start = frame_start
                self._run += 1
            else:
                self._run = 0
            if not self.in_speech and self._run >= self._speech_frames_needed:
                self.in_speech, self._run = True, 0
                events.append(VADEvent("speech_started", max(self._run_start - self._prefix, 0)))
            elif self.in_speech and self._run >= self._silence_frames_needed:
                self.in_speech, self._run = False, 0
                events.append(VADEvent("speech_stopped", self._run_start))
        self._pending = buffered[num_frames * self._frame :].copy()
        self._offset += num_frames * self._frame
        return events


__all__ = ["EnergyVAD", "VADConfig", "VADEvent"]
