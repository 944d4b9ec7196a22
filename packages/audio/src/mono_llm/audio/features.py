"""Whisper's log-mel spectrogram, in torch so it runs on the GPU beside the model.

Equal (to float32 rounding) to transformers' `WhisperFeatureExtractor`: a 400-point periodic
Hann STFT with hop 160 (centered, reflect-padded), power spectrum, a Slaney-normalised
Slaney-scale mel filter bank from 0 to 8 kHz, log10 clamped at 1e-10, each clip floored at its
own maximum minus 8 (i.e. an 80 dB range), then (x + 4) / 4. The last STFT frame is dropped,
so 30 s (480,000 samples) give exactly 3,000 frames. 80 mel bins for every checkpoint up to
large-v2, 128 for large-v3 and large-v3-turbo (`feature_size` in preprocessor_config.json).

The mel filter bank is computed here in float64 (about 20 lines) rather than by librosa, so the
hot path does not import librosa (~1 s) and the numbers do not depend on its version.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mono_llm.audio.resample import WHISPER_SAMPLING_RATE


@dataclass(frozen=True, slots=True)
class WhisperFeatureConfig:
    """The parameters a Whisper checkpoint's preprocessor_config.json sets."""

    n_mels: int = 80
    sampling_rate: int = WHISPER_SAMPLING_RATE
    n_fft: int = 400
    hop_length: int = 160
    chunk_length_s: int = 30

    def __post_init__(self) -> None:
        if self.n_mels <= 0 or self.n_fft <= 0 or self.hop_length <= 0:
            raise ValueError(f"invalid Whisper feature parameters: {self}")

    @property
    def n_samples(self) -> int:
        """Samples in one model window (480,000 for 30 s at 16 kHz)."""
        return self.chunk_length_s * self.sampling_rate

    @property
    def n_frames(self) -> int:
        """Mel frames in one model window (3,000)."""
        return self.n_samples // self.hop_length

    @classmethod
    def from_preprocessor_config(cls, source: str | Path | dict) -> WhisperFeatureConfig:
        """Read a model folder's preprocessor_config.json (a folder, the file, or its dict)."""
        if not isinstance(source, dict):
            path = Path(source)
            if path.is_dir():
                path = path / "preprocessor_config.json"
            source = json.loads(path.read_text())
        return cls(
            n_mels=int(source.get("feature_size", 80)),
            sampling_rate=int(source.get("sampling_rate", WHISPER_SAMPLING_RATE)),
            n_fft=int(source.get("n_fft", 400)),
            hop_length=int(source.get("hop_length", 160)),
            chunk_length_s=int(source.get("chunk_length", 30)),
        )


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear to 1 kHz, logarithmic above (the scale Whisper was trained on)."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = 3.0 * hz / 200.0
    log_step = math.log(6.4) / 27.0
    return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / log_step, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    log_step = math.log(6.4) / 27.0
    return np.where(mel >= 15.0, 1000.0 * np.exp(log_step * (mel - 15.0)), 200.0 * mel / 3.0)


@functools.lru_cache(maxsize=8)
def mel_filter_bank(
    n_mels: int, sampling_rate: int = WHISPER_SAMPLING_RATE, n_fft: int = 400
) -> np.ndarray:
    """Triangular Slaney-normalised filters, [n_fft // 2 + 1, n_mels] float32, 0 Hz to 8 kHz."""
    fft_freqs = np.linspace(0.0, sampling_rate / 2, n_fft // 2 + 1)
    mel_edges = np.linspace(_hz_to_mel(0.0), _hz_to_mel(8000.0), n_mels + 2)
    hz_edges = _mel_to_hz(mel_edges)  # [n_mels + 2]
    widths = np.diff(hz_edges)  # [n_mels + 1]
    offsets = hz_edges[None, :] - fft_freqs[:, None]  # [n_freqs, n_mels + 2]
    rising = -offsets[:, :-2] / widths[:-1]
    falling = offsets[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(rising, falling))
    filters *= 2.0 / (hz_edges[2:] - hz_edges[:-2])  # equal area per filter (Slaney norm)
    filters = filters.astype(np.float32)
    filters.setflags(write=False)  # cached and shared: nobody may modify it
    return filters


def default_device() -> torch.device:
    """The GPU when there is one: the STFT of a batch of 30 s windows is ~50x faster there."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def log_mel_spectrogram(
    audio: np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor],
    config: WhisperFeatureConfig | None = None,
    *,
    num_samples: int | None = -1,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Whisper input features for one clip or a batch: [batch, n_mels, frames] float32.

    `audio` is mono float samples at `config.sampling_rate` (one 1-D array, a list of them, or
    a 2-D [batch, samples] array). Each clip is zero-padded or cut to `num_samples` first: -1
    (the default) means one model window (30 s -> 3,000 frames, as the feature extractor's
    default `padding="max_length"`), None means the longest clip of the batch (its
    `padding="longest"`). Each clip's 80 dB floor is taken from its own maximum, so the result
    for a clip does not depend on what it is batched with. The result stays on `device`
    (default: the GPU when there is one).
    """
    config = config or WhisperFeatureConfig()
    device = torch.device(device) if device is not None else default_device()
    clips = _as_clip_list(audio)
    if not clips:
        raise ValueError("log_mel_spectrogram needs at least one clip")
    if num_samples == -1:
        num_samples = config.n_samples
    if num_samples is None:
        num_samples = max(clip.shape[0] for clip in clips)
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    waveforms = torch.zeros(len(clips), num_samples, dtype=torch.float32, device=device)
    for row, clip in enumerate(clips):
        length = min(clip.shape[0], num_samples)
        waveforms[row, :length] = clip[:length].to(device=device, dtype=torch.float32)

    window = torch.hann_window(config.n_fft, device=device)
    stft = torch.stft(
        waveforms, config.n_fft, config.hop_length, window=window, return_complex=True
    )  # [batch, n_freqs, frames + 1]
    power = (stft[..., :-1].abs() ** 2).contiguous()  # [batch, n_freqs, frames]
    filters = torch.tensor(
        mel_filter_bank(config.n_mels, config.sampling_rate, config.n_fft), device=device
    )  # [n_freqs, n_mels]
    mel = filters.T @ power  # [batch, n_mels, frames]
    log_spec = torch.clamp(mel, min=1e-10).log10()
    peak = log_spec.amax(dim=(1, 2), keepdim=True)
    log_spec = torch.maximum(log_spec, peak - 8.0)
    return (log_spec + 4.0) / 4.0


def _as_clip_list(
    audio: np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor],
) -> list[torch.Tensor]:
    if isinstance(audio, (np.ndarray, torch.Tensor)):
        tensor = torch.as_tensor(audio)
        if tensor.dim() == 1:
            return [tensor]
        if tensor.dim() == 2:
            return list(tensor.unbind(0))
        raise ValueError(
            f"expected mono audio [samples] or [batch, samples], got {tuple(tensor.shape)}"
        )
    clips = [
        torch.as_tensor(np.asarray(clip) if not isinstance(clip, torch.Tensor) else clip)
        for clip in audio
    ]
    for clip in clips:
        if clip.dim() != 1:
            raise ValueError(f"each clip must be mono [samples], got {tuple(clip.shape)}")
    return clips


__all__ = [
    "WhisperFeatureConfig",
    "default_device",
    "log_mel_spectrogram",
    "mel_filter_bank",
]
