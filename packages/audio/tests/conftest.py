"""Shared test audio: one sentence spoken by espeak-ng, encoded to every supported format.

Everything is made here, in memory, with encoders that need no system ffmpeg (soundfile's
libsndfile and PyAV's bundled codecs), so the decode tests check real files of each format.
"""

from __future__ import annotations

import io
import shutil
import subprocess

import av
import numpy as np
import pytest
import soundfile

from mono_llm.audio import resample

SENTENCE = "The quick brown fox jumps over the lazy dog."


def speak(text: str, tmp_dir) -> tuple[np.ndarray, int]:
    """espeak-ng's rendering of `text`: float32 samples and their rate (22,050 Hz)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng; `make deps` does it)")
    path = tmp_dir / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    samples, rate = soundfile.read(path, dtype="float32")
    return samples, rate


@pytest.fixture(scope="session")
def spoken(tmp_path_factory) -> tuple[np.ndarray, int]:
    return speak(SENTENCE, tmp_path_factory.mktemp("espeak"))


@pytest.fixture(scope="session")
def spoken_16k(spoken) -> np.ndarray:
    samples, rate = spoken
    return resample(samples, rate, 16_000)


def encode_soundfile(samples: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def encode_pyav(
    samples: np.ndarray, rate: int, container: str, codec: str, codec_rate: int
) -> bytes:
    """Encode with PyAV; the encoder resamples to `codec_rate` and frames the audio itself."""
    buffer = io.BytesIO()
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)[None, :]
    with av.open(buffer, mode="w", format=container) as output:
        stream = output.add_stream(codec, rate=codec_rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = 0
        for packet in stream.encode(frame):
            output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
    return buffer.getvalue()


# name -> (encoder, minimum correlation with the original after alignment).
# Lossless formats must match to the 16-bit quantisation; lossy codecs keep the waveform's
# shape (correlation) but not every sample.
FORMATS = {
    "wav": (lambda x, r: encode_soundfile(x, r, "WAV", "PCM_16"), 0.9999),
    "flac": (lambda x, r: encode_soundfile(x, r, "FLAC", "PCM_16"), 0.9999),
    "ogg-vorbis": (lambda x, r: encode_soundfile(x, r, "OGG", "VORBIS"), 0.98),
    # Opus in Ogg takes 8/12/16/24/48 kHz input.
    "ogg-opus": (
        lambda x, r: encode_soundfile(resample(x, r, 16_000), 16_000, "OGG", "OPUS"),
        0.98,
    ),
    "mp3": (lambda x, r: encode_soundfile(x, r, "MP3"), 0.98),
    # MPGA: a raw MPEG-1 audio stream, here Layer II (Layer III is the .mp3 case).
    "mpga": (lambda x, r: encode_pyav(x, r, "mp2", "mp2", 44_100), 0.95),
    # MPEG: an MPEG program stream carrying MPEG audio.
    "mpeg": (lambda x, r: encode_pyav(x, r, "mpeg", "mp2", 44_100), 0.95),
    "mp4": (lambda x, r: encode_pyav(x, r, "mp4", "aac", 44_100), 0.98),
    "m4a": (lambda x, r: encode_pyav(x, r, "ipod", "aac", 44_100), 0.98),
    "webm": (lambda x, r: encode_pyav(x, r, "webm", "libopus", 48_000), 0.98),
}


@pytest.fixture(scope="session")
def encoded(spoken) -> dict[str, tuple[bytes, float]]:
    """Format name -> (the clip encoded in it, the minimum correlation its decode must reach)."""
    samples, rate = spoken
    return {name: (encode(samples, rate), min_corr) for name, (encode, min_corr) in FORMATS.items()}
