"""Encoded audio bytes -> mono float32 samples at the model's rate.

Two decoders, neither needing a system ffmpeg:
- soundfile (libsndfile) first: WAV, FLAC, OGG (Vorbis, Opus) and MP3/MPGA, exact and fast;
- PyAV (ffmpeg's libraries, bundled in its wheel) for the containers libsndfile cannot read:
  MP4/M4A (AAC), WEBM/Matroska (Opus, Vorbis), MPEG program streams, and anything else ffmpeg
  recognises.

Channels are averaged (the same downmix as librosa's `to_mono`; ffmpeg's own mono layout would
scale a stereo sum by 1/sqrt(2) instead of 1/2), then soxr resamples. Limits are checked as
early as the format allows: the byte size before decoding, the duration from the header when
there is one and again while decoding, so a small file that expands into hours of audio is
refused before it fills memory.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile

from mono_llm.audio.errors import AudioDecodeError, AudioTooLargeError, AudioTooLongError
from mono_llm.audio.resample import WHISPER_SAMPLING_RATE, resample

DEFAULT_MAX_BYTES = 25 * 1024 * 1024
DEFAULT_MAX_DURATION_S = 3600.0
# A file whose header promises more audio than decodes (by both margins) was cut short.
_TRUNCATION_MIN_MISSING_S = 0.5
_TRUNCATION_MIN_MISSING_FRACTION = 0.1
# Containers whose duration ffmpeg may only estimate from the first frames' bitrate (a VBR MP3
# without a Xing header can be off by 2x): only a file missing most of its audio counts there.
_ESTIMATED_DURATION_FORMATS = frozenset({"mp3", "mpeg", "mpegts", "aac", "mp2", "ac3"})
_ESTIMATED_TRUNCATION_MIN_MISSING_FRACTION = 0.75


@dataclass(frozen=True, slots=True)
class AudioLimits:
    """Upper bounds on one audio input (an upload, a file)."""

    max_bytes: int = DEFAULT_MAX_BYTES
    """Largest encoded input accepted, in bytes (25 MiB, OpenAI's upload limit)."""
    max_duration_s: float = DEFAULT_MAX_DURATION_S
    """Longest decoded audio accepted, in seconds."""

    def __post_init__(self) -> None:
        if self.max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {self.max_bytes}")
        if self.max_duration_s <= 0:
            raise ValueError(f"max_duration_s must be positive, got {self.max_duration_s}")


@dataclass(frozen=True, slots=True)
class DecodedAudio:
    """Mono float32 samples in [-1, 1] and where they came from."""

    samples: np.ndarray  # [num_samples] float32
    sampling_rate: int
    source_sampling_rate: int
    source_format: str  # the decoder's name for the container, e.g. "WAV", "mov,mp4,m4a,..."

    @property
    def duration_s(self) -> float:
        return self.samples.shape[0] / self.sampling_rate


def decode_audio(
    data: bytes | bytearray | memoryview,
    *,
    sampling_rate: int | None = WHISPER_SAMPLING_RATE,
    limits: AudioLimits | None = None,
) -> DecodedAudio:
    """Decode an encoded audio file held in memory.

    `sampling_rate=None` keeps the file's own rate. Raises `AudioTooLargeError`,
    `AudioTooLongError` or `AudioDecodeError` (all ValueErrors) with a message fit for the
    person who sent the file.
    """
    limits = limits or AudioLimits()
    data = bytes(data)
    if len(data) == 0:
        raise AudioDecodeError("audio file is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise AudioTooLargeError(len(data), limits.max_bytes)
    decoded = _decode_with_soundfile(data, limits)
    if decoded is None:
        decoded = _decode_with_pyav(data, limits)
    samples, source_rate, source_format = decoded
    if samples.size == 0:
        raise AudioDecodeError(f"audio file ({source_format}) contains no audio samples")
    if not np.isfinite(samples).all():
        raise AudioDecodeError(f"audio file ({source_format}) decodes to non-finite samples")
    target_rate = sampling_rate or source_rate
    return DecodedAudio(
        samples=resample(samples, source_rate, target_rate),
        sampling_rate=target_rate,
        source_sampling_rate=source_rate,
        source_format=source_format,
    )


def _decode_with_soundfile(data: bytes, limits: AudioLimits) -> tuple[np.ndarray, int, str] | None:
    """Samples, rate and format name, or None when libsndfile does not know the format."""
    try:
        sound = soundfile.SoundFile(io.BytesIO(data))
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError):
        return None
    with sound:
        rate, declared_frames, fmt = sound.samplerate, sound.frames, sound.format
        if rate <= 0:
            raise AudioDecodeError(f"audio file ({fmt}) declares an invalid sampling rate {rate}")
        if declared_frames / rate > limits.max_duration_s:
            raise AudioTooLongError(declared_frames / rate, limits.max_duration_s)
        try:
            frames = sound.read(dtype="float32", always_2d=True)  # [frames, channels]
        except (soundfile.LibsndfileError, RuntimeError) as exc:
            raise AudioDecodeError(f"audio file ({fmt}) is corrupt: {exc}") from None
    _check_not_truncated(frames.shape[0] / rate, declared_frames / rate, fmt)
    return frames.mean(axis=1, dtype=np.float32), rate, fmt


def _decode_with_pyav(data: bytes, limits: AudioLimits) -> tuple[np.ndarray, int, str]:
    try:
        import av
    except ModuleNotFoundError:  # a dependency of this package; only a broken install lands here
        raise AudioDecodeError(
            "audio format not readable by libsndfile and PyAV (`pip install av`) is missing"
        ) from None
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError):
        raise AudioDecodeError(
            "could not decode the audio file: it is corrupt, truncated or not in a supported "
            "format (FLAC, MP3, MP4, MPEG, MPGA, M4A, OGG, WAV, WEBM)"
        ) from None
    with container:
        fmt = container.format.name
        if not container.streams.audio:
            raise AudioDecodeError(f"the file ({fmt}) has no audio stream")
        stream = container.streams.audio[0]
        declared_s = container.duration / av.time_base if container.duration else None
        if declared_s is not None and declared_s > limits.max_duration_s:
            raise AudioTooLongError(declared_s, limits.max_duration_s)
        chunks: list[np.ndarray] = []
        decoded_samples = 0
        rate = 0
        # Planar float keeps channels apart ([channels, n]) so they are averaged here.
        to_float = av.AudioResampler(format="fltp")
        try:
            for frame in container.decode(stream):
                for converted in to_float.resample(frame):
                    if rate and converted.sample_rate != rate:
                        raise AudioDecodeError(
                            f"the audio stream ({fmt}) changes its sampling rate mid-stream"
                        )
                    rate = converted.sample_rate
                    planes = converted.to_ndarray()
                    chunks.append(planes.mean(axis=0, dtype=np.float32))
                    decoded_samples += planes.shape[1]
                    if decoded_samples / rate > limits.max_duration_s:
                        raise AudioTooLongError(
                            decoded_samples / rate, limits.max_duration_s, at_least=True
                        )
        except av.error.FFmpegError as exc:
            if decoded_samples == 0:
                raise AudioDecodeError(
                    f"could not decode the audio stream ({fmt}): {exc.strerror or exc}"
                ) from None
            raise AudioDecodeError(
                f"audio file ({fmt}) is corrupt or truncated after "
                f"{decoded_samples / rate:.2f} s: {exc.strerror or exc}"
            ) from None
    if rate <= 0 or decoded_samples == 0:
        raise AudioDecodeError(f"audio file ({fmt}) contains no decodable audio")
    if declared_s is not None:
        estimated = fmt in _ESTIMATED_DURATION_FORMATS
        _check_not_truncated(
            decoded_samples / rate,
            declared_s,
            fmt,
            min_missing_fraction=(
                _ESTIMATED_TRUNCATION_MIN_MISSING_FRACTION
                if estimated
                else _TRUNCATION_MIN_MISSING_FRACTION
            ),
        )
    return np.concatenate(chunks), rate, fmt


def _check_not_truncated(
    decoded_s: float,
    declared_s: float,
    fmt: str,
    *,
    min_missing_fraction: float = _TRUNCATION_MIN_MISSING_FRACTION,
) -> None:
    missing = declared_s - decoded_s
    if missing > _TRUNCATION_MIN_MISSING_S and missing > min_missing_fraction * declared_s:
        raise AudioDecodeError(
            f"audio file ({fmt}) is truncated: its header declares {declared_s:.2f} s of audio "
            f"but only {decoded_s:.2f} s could be decoded"
        )


__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DURATION_S",
    "AudioLimits",
    "DecodedAudio",
    "decode_audio",
]
