"""Streaming audio (PCM16 frames over a WebSocket) -> Whisper-sized windows.

A realtime client sends little-endian 16-bit mono PCM in small appends (at 16 kHz in vLLM's
protocol, at 24 kHz in OpenAI's). The chunker converts and resamples each append as it arrives
(soxr's streaming resampler, so chunk borders leave no clicks), buffers the 16 kHz samples, and
hands out a window whenever the buffer reaches the window length, cut at its quietest point in
the last few seconds (as `split_audio` does for files); `flush` returns what remains when the
client commits or closes. Each window carries its offset in the stream for timestamps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mono_llm.audio.resample import WHISPER_SAMPLING_RATE, StreamingResampler
from mono_llm.audio.windows import DEFAULT_SEARCH_S, ENERGY_FRAME_S, MAX_WINDOW_S, quietest_point

PCM16_SCALE = 32768.0


def pcm16_to_float32(data: bytes | bytearray | memoryview) -> np.ndarray:
    """Little-endian signed 16-bit PCM bytes -> float32 samples in [-1, 1)."""
    if len(data) % 2:
        raise ValueError(f"PCM16 data must have an even number of bytes, got {len(data)}")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / PCM16_SCALE


@dataclass(frozen=True, slots=True)
class StreamWindow:
    start: int
    """Offset of the first sample in the (resampled) stream."""
    samples: np.ndarray  # [num_samples] float32 at the chunker's output rate

    def start_s(self, sampling_rate: int = WHISPER_SAMPLING_RATE) -> float:
        return self.start / sampling_rate


class StreamingChunker:
    """Accumulates PCM16 appends and yields windows of at most `window_s` seconds."""

    def __init__(
        self,
        input_sampling_rate: int = WHISPER_SAMPLING_RATE,
        *,
        output_sampling_rate: int = WHISPER_SAMPLING_RATE,
        window_s: float = MAX_WINDOW_S,
        search_s: float = DEFAULT_SEARCH_S,
    ) -> None:
        if window_s <= 0 or search_s <= 0 or search_s >= window_s:
            raise ValueError(f"need 0 < search_s ({search_s}) < window_s ({window_s})")
        self.input_sampling_rate = input_sampling_rate
        self.output_sampling_rate = output_sampling_rate
        self._window = round(window_s * output_sampling_rate)
        self._search = round(search_s * output_sampling_rate)
        self._frame = max(int(ENERGY_FRAME_S * output_sampling_rate), 1)
        self._resampler = StreamingResampler(input_sampling_rate, output_sampling_rate)
        self._odd_byte = b""  # a sample split across two appends
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self._emitted = 0  # stream offset of the first buffered sample

    @property
    def buffered_s(self) -> float:
        """Seconds of audio received but not yet handed out in a window."""
        return self._buffered / self.output_sampling_rate

    def push(self, pcm16: bytes | bytearray | memoryview) -> list[StreamWindow]:
        """Add PCM16 bytes; return the windows that became full (usually none)."""
        data = self._odd_byte + bytes(pcm16)
        usable = len(data) - len(data) % 2
        self._odd_byte = data[usable:]
        return self.push_samples(pcm16_to_float32(data[:usable]))

    def push_samples(self, samples: np.ndarray) -> list[StreamWindow]:
        """Add float samples at the input rate; return the windows that became full."""
        resampled = self._resampler.push(samples)
        if resampled.size:
            self._buffer.append(resampled)
            self._buffered += resampled.shape[0]
        return self._drain(final=False)

    def flush(self) -> list[StreamWindow]:
        """End of stream (or a commit): the rest of the audio, normally as one window."""
        tail = self._resampler.flush()
        if tail.size:
            self._buffer.append(tail)
            self._buffered += tail.shape[0]
        # A flushed resampler takes no more audio; later pushes start a fresh stream.
        self._resampler = StreamingResampler(self.input_sampling_rate, self.output_sampling_rate)
        self._odd_byte = b""
        return self._drain(final=True)

    def _drain(self, *, final: bool) -> list[StreamWindow]:
        windows: list[StreamWindow] = []
        # Appends are small (20-100 ms): join the buffer only when a window is due.
        if not self._buffered or (not final and self._buffered <= self._window):
            return windows
        pending = np.concatenate(self._buffer) if len(self._buffer) > 1 else self._buffer[0]
        while pending.shape[0] > self._window:
            cut = quietest_point(pending, self._window - self._search, self._window, self._frame)
            windows.append(StreamWindow(self._emitted, pending[:cut].copy()))
            self._emitted += cut
            pending = pending[cut:]
        if final and pending.size:
            windows.append(StreamWindow(self._emitted, pending.copy()))
            self._emitted += pending.shape[0]
            pending = pending[:0]
        self._buffer = [pending] if pending.size else []
        self._buffered = pending.shape[0]
        return windows


__all__ = ["PCM16_SCALE", "StreamWindow", "StreamingChunker", "pcm16_to_float32"]
