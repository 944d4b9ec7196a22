"""Sample-rate conversion with soxr (the resampler librosa itself defaults to).

Whisper wants 16 kHz; uploads come at 8 to 48 kHz and OpenAI's realtime protocol sends 24 kHz.
soxr's "HQ" quality keeps the passband flat to well above Whisper's 8 kHz mel ceiling, and its
streaming resampler lets the realtime chunker convert frame by frame with the same filter as
the one-shot path (no clicks at chunk borders).
"""

from __future__ import annotations

import numpy as np
import soxr

WHISPER_SAMPLING_RATE = 16_000


def resample(
    samples: np.ndarray, orig_sampling_rate: int, target_sampling_rate: int = WHISPER_SAMPLING_RATE
) -> np.ndarray:
    """Resample mono float audio; returns float32 (the input itself when the rates match)."""
    if orig_sampling_rate <= 0 or target_sampling_rate <= 0:
        raise ValueError(
            f"sampling rates must be positive, got {orig_sampling_rate} -> {target_sampling_rate}"
        )
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"expected mono samples of shape [n], got shape {samples.shape}")
    if orig_sampling_rate == target_sampling_rate or samples.size == 0:
        return samples
    return soxr.resample(samples, orig_sampling_rate, target_sampling_rate, quality="HQ").astype(
        np.float32, copy=False
    )


class StreamingResampler:
    """Resamples a stream chunk by chunk; the concatenated output equals a one-shot resample
    up to soxr's filter delay, which `flush` releases at the end."""

    def __init__(
        self, orig_sampling_rate: int, target_sampling_rate: int = WHISPER_SAMPLING_RATE
    ) -> None:
        self.orig_sampling_rate = orig_sampling_rate
        self.target_sampling_rate = target_sampling_rate
        self._stream = (
            None
            if orig_sampling_rate == target_sampling_rate
            else soxr.ResampleStream(
                orig_sampling_rate, target_sampling_rate, 1, dtype="float32", quality="HQ"
            )
        )

    def push(self, samples: np.ndarray) -> np.ndarray:
        samples = np.asarray(samples, dtype=np.float32)
        if self._stream is None:
            return samples
        return self._stream.resample_chunk(samples, last=False)

    def flush(self) -> np.ndarray:
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        return self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)


__all__ = ["WHISPER_SAMPLING_RATE", "StreamingResampler", "resample"]
