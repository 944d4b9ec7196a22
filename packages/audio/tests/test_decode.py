"""decode_audio: every supported format gives the original samples back (within codec
tolerance), and bad input fails with a typed, readable error."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile

from mono_llm.audio import (
    AudioDecodeError,
    AudioLimits,
    AudioTooLargeError,
    AudioTooLongError,
    decode_audio,
)

FORMAT_NAMES = [
    "wav",
    "flac",
    "ogg-vorbis",
    "ogg-opus",
    "mp3",
    "mpga",
    "mpeg",
    "mp4",
    "m4a",
    "webm",
]


def aligned(
    decoded: np.ndarray, reference: np.ndarray, max_lag: int = 4000
) -> tuple[np.ndarray, np.ndarray]:
    """Shift `decoded` by the codec's delay (found by cross-correlation) and trim both to one length."""
    n = min(decoded.shape[0], reference.shape[0]) - max_lag
    scores = [float(np.dot(decoded[lag : lag + n], reference[:n])) for lag in range(max_lag)]
    lag = int(np.argmax(scores))
    length = min(decoded.shape[0] - lag, reference.shape[0])
    return decoded[lag : lag + length], reference[:length]


def test_every_listed_format_is_covered(encoded):
    assert sorted(encoded) == sorted(FORMAT_NAMES)


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_format_decodes_to_the_original_samples(name, encoded, spoken_16k):
    data, min_corr = encoded[name]
    audio = decode_audio(data)
    assert audio.sampling_rate == 16_000
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    # Codec padding (encoder delay, last frame) changes the length by a few ms at most.
    assert abs(audio.duration_s - spoken_16k.shape[0] / 16_000) < 0.1, audio.duration_s
    ours, reference = aligned(audio.samples, spoken_16k)
    corr = float(np.corrcoef(ours, reference)[0, 1])
    assert corr >= min_corr, f"{name}: correlation {corr:.4f} < {min_corr}"
    if min_corr > 0.999:  # lossless: equal up to 16-bit quantisation and resampling
        assert np.abs(ours - reference).max() < 2e-4


def test_lossless_decode_keeps_the_source_rate(encoded, spoken):
    samples, rate = spoken
    audio = decode_audio(encoded["flac"][0], sampling_rate=None)
    assert audio.sampling_rate == audio.source_sampling_rate == rate
    np.testing.assert_allclose(audio.samples, samples, atol=1.0 / 32768)


def test_stereo_is_averaged_to_mono(spoken):
    samples, rate = spoken
    left, right = samples, -0.5 * samples  # average: 0.25 * samples
    buffer = io.BytesIO()
    soundfile.write(buffer, np.stack([left, right], axis=1), rate, format="WAV", subtype="FLOAT")
    audio = decode_audio(buffer.getvalue(), sampling_rate=None)
    np.testing.assert_allclose(audio.samples, 0.25 * samples, atol=1e-6)


def test_stereo_in_a_container_is_averaged_too(spoken):
    import av

    samples, rate = spoken
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as output:
        stream = output.add_stream("aac", rate=rate)
        stream.layout = "stereo"
        pcm = (np.stack([samples, samples]) * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(
            pcm.T.reshape(1, -1).copy(), format="s16", layout="stereo"
        )
        frame.sample_rate, frame.pts = rate, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            output.mux(packet)
    audio = decode_audio(buffer.getvalue(), sampling_rate=None)
    # Identical channels: the mono mix has the original level (ffmpeg's own downmix: +3 dB).
    ours, reference = aligned(audio.samples, samples)
    gain = float(np.dot(ours, reference) / np.dot(reference, reference))
    assert 0.9 < gain < 1.1, gain


def test_empty_input():
    with pytest.raises(AudioDecodeError, match="empty"):
        decode_audio(b"")


def test_text_file_named_wav():
    with pytest.raises(AudioDecodeError, match="not in a supported format"):
        decode_audio(b"this is a text file, not a RIFF header\n" * 20)


def test_random_bytes():
    with pytest.raises(AudioDecodeError):
        decode_audio(np.random.default_rng(0).bytes(10_000))


@pytest.mark.parametrize("name", ["mp3", "webm", "flac"])
def test_truncated_file(name, encoded):
    data = encoded[name][0]
    with pytest.raises(AudioDecodeError, match=r"truncated|corrupt"):
        decode_audio(data[: len(data) // 2])


@pytest.mark.parametrize("name", ["mp3", "mp4", "m4a", "webm", "ogg-vorbis"])
def test_only_a_header(name, encoded):
    with pytest.raises(AudioDecodeError):
        decode_audio(encoded[name][0][:300])


def test_corrupt_payload_is_an_error_not_a_crash(encoded):
    data = bytearray(encoded["flac"][0])
    data[len(data) // 3 : len(data) // 3 + 2000] = bytes(2000)
    with pytest.raises(AudioDecodeError):
        decode_audio(bytes(data))


def test_size_limit(encoded):
    data = encoded["wav"][0]
    with pytest.raises(
        AudioTooLargeError, match=f"{len(data)} bytes; the limit is 1000 bytes"
    ) as info:
        decode_audio(data, limits=AudioLimits(max_bytes=1000))
    assert info.value.size_bytes == len(data)
    assert "25 MB" in str(AudioTooLargeError(30 * 1024 * 1024, 25 * 1024 * 1024))
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("name", ["wav", "mp3", "mp4", "webm", "mpeg"])
def test_duration_limit(name, encoded):
    with pytest.raises(AudioTooLongError, match=r"the limit is 1\.0 s"):
        decode_audio(encoded[name][0], limits=AudioLimits(max_duration_s=1.0))


def test_duration_limit_while_decoding_when_the_header_has_no_duration(spoken):
    import av

    samples, rate = spoken
    # A raw ADTS AAC stream declares no reliable duration: the limit applies during decoding.
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="adts") as output:
        stream = output.add_stream("aac", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(
            (samples * 32767).astype(np.int16)[None], format="s16", layout="mono"
        )
        frame.sample_rate, frame.pts = rate, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            output.mux(packet)
    assert decode_audio(buffer.getvalue()).duration_s > 2.0
    with pytest.raises(AudioTooLongError):
        decode_audio(buffer.getvalue(), limits=AudioLimits(max_duration_s=1.0))


def test_limits_validate():
    with pytest.raises(ValueError):
        AudioLimits(max_bytes=0)
    with pytest.raises(ValueError):
        AudioLimits(max_duration_s=-1)
