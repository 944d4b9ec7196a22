"""StreamingChunker: PCM16 appends (16 or 24 kHz) in, 16 kHz windows out."""

from __future__ import annotations

import numpy as np
import pytest

from mono_llm.audio import StreamingChunker, pcm16_to_float32, resample


def to_pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def test_pcm16_to_float32():
    data = np.array([0, 16384, -32768, 32767], dtype="<i2").tobytes()
    np.testing.assert_allclose(pcm16_to_float32(data), [0.0, 0.5, -1.0, 32767 / 32768])
    with pytest.raises(ValueError):
        pcm16_to_float32(b"\x00\x01\x02")


def test_24k_stream_equals_one_shot_resampling(spoken):
    samples, rate = spoken
    at_24k = resample(samples, rate, 24_000)
    pcm = to_pcm16(at_24k)
    chunker = StreamingChunker(24_000)
    windows = []
    # Odd-sized appends: samples split across two messages must survive.
    for start in range(0, len(pcm), 4_801):
        windows += chunker.push(pcm[start : start + 4_801])
    assert windows == []  # shorter than one window
    assert chunker.buffered_s > 0
    windows = chunker.flush()
    assert len(windows) == 1 and windows[0].start == 0
    expected = resample(pcm16_to_float32(pcm), 24_000, 16_000)
    got = windows[0].samples
    assert abs(got.shape[0] - expected.shape[0]) <= 2
    n = min(got.shape[0], expected.shape[0])
    assert np.abs(got[:n] - expected[:n]).max() < 1e-3
    assert chunker.buffered_s == 0 and chunker.flush() == []


def test_long_stream_yields_windows_with_offsets(spoken_16k):
    rng = np.random.default_rng(0)
    audio = np.resize(spoken_16k, 75 * 16_000) + 0.01 * rng.standard_normal(75 * 16_000)
    chunker = StreamingChunker(16_000, window_s=30.0)
    windows = []
    for start in range(0, audio.shape[0], 3_200):  # 200 ms appends
        windows += chunker.push(to_pcm16(audio[start : start + 3_200]))
    assert len(windows) == 2
    windows += chunker.flush()
    assert [w.start for w in windows] == [
        0,
        windows[0].samples.shape[0],
        windows[0].samples.shape[0] + windows[1].samples.shape[0],
    ]
    assert all(25 * 16_000 <= w.samples.shape[0] <= 30 * 16_000 for w in windows[:2])
    joined = np.concatenate([w.samples for w in windows])
    np.testing.assert_allclose(joined, pcm16_to_float32(to_pcm16(audio)), atol=1e-6)


def test_chunker_keeps_working_after_a_commit(spoken_16k):
    chunker = StreamingChunker(16_000)
    chunker.push(to_pcm16(spoken_16k))
    first = chunker.flush()
    chunker.push(to_pcm16(spoken_16k))
    second = chunker.flush()
    assert second[0].start == first[0].samples.shape[0]
    np.testing.assert_array_equal(first[0].samples, second[0].samples)
