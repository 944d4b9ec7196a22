"""split_audio cuts long audio at quiet points into overlapping windows of at most 30 s."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mono_llm.audio import AudioWindow, join_transcripts, quietest_point, split_audio

RATE = 16_000


def speech_with_gaps(spoken_16k: np.ndarray, total_s: float, gaps_s: list[float]) -> np.ndarray:
    """Continuous speech (the clip repeated back to back, with low noise) except for 0.4 s
    silences starting at `gaps_s`."""
    rng = np.random.default_rng(0)
    total = int(total_s * RATE)
    audio = np.resize(
        spoken_16k + 0.05 * rng.standard_normal(spoken_16k.shape[0]).astype(np.float32), total
    )
    audio = np.where(np.abs(audio) < 0.02, 0.05, audio).astype(
        np.float32
    )  # no quiet stretch in speech
    for gap in gaps_s:
        audio[int(gap * RATE) : int((gap + 0.4) * RATE)] = 0.001 * rng.standard_normal(
            int(0.4 * RATE)
        )
    return audio


def test_short_audio_is_one_window(spoken_16k):
    assert split_audio(spoken_16k) == [AudioWindow(0, spoken_16k.shape[0])]
    assert split_audio(np.zeros(30 * RATE, dtype=np.float32)) == [AudioWindow(0, 30 * RATE)]
    assert split_audio(np.zeros(0, dtype=np.float32)) == []


def test_cuts_land_in_the_silences(spoken_16k):
    gaps = [27.0, 53.5, 81.0]  # each inside the 5 s before a 30 s boundary
    audio = speech_with_gaps(spoken_16k, 100.0, gaps)
    windows = split_audio(audio, overlap_s=0.2)
    assert len(windows) == 4
    assert windows[0].start == 0 and windows[-1].end == audio.shape[0]
    for window in windows:
        assert 0 < window.num_samples <= 30 * RATE
    for previous, following, gap in zip(windows, windows[1:], gaps):
        cut = (previous.end + following.start) / 2
        assert previous.end - following.start == int(0.2 * RATE)  # the overlap
        assert gap * RATE <= cut <= (gap + 0.4) * RATE, (cut / RATE, gap)


def test_windows_cover_the_clip_without_holes(spoken_16k):
    audio = speech_with_gaps(spoken_16k, 200.0, [])
    windows = split_audio(audio, overlap_s=0.0)
    assert sum(w.num_samples for w in windows) == audio.shape[0]
    assert all(a.end == b.start for a, b in itertools.pairwise(windows))
    assert all(w.num_samples <= 30 * RATE for w in windows)
    # With no silence the cut still falls in the search range (25 s to 30 s into the window).
    assert all(w.num_samples >= 25 * RATE for w in windows[:-1])
    np.testing.assert_array_equal(np.concatenate([w.slice(audio) for w in windows]), audio)


def test_quietest_point_prefers_the_quiet_stretch():
    audio = np.ones(10_000, dtype=np.float32)
    audio[6_000:6_500] = 0.0
    point = quietest_point(audio, 1_000, 9_000, frame=400)
    assert 6_200 <= point <= 6_300
    with pytest.raises(ValueError):
        quietest_point(audio, 0, 20_000, frame=400)


def test_bad_parameters():
    with pytest.raises(ValueError):
        split_audio(np.zeros(10, dtype=np.float32), search_s=20.0)


def test_join_transcripts_drops_the_repeated_boundary_word():
    assert join_transcripts([" The quick brown fox", "Fox jumps over", "", "the lazy dog. "]) == (
        "The quick brown fox jumps over the lazy dog."
    )
    assert join_transcripts(["one two", "three"]) == "one two three"
    assert join_transcripts(["the end.", "The end of it"]) == "the end. of it"
    assert join_transcripts([]) == ""
