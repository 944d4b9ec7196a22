"""Long audio -> Whisper-sized windows cut where it is quietest.

Whisper sees 30 s at a time. Cutting blindly every 30 s splits words, which then come out
garbled on both sides; cutting at the quietest point of the last few seconds before each
boundary almost always lands between words. The windows overlap slightly (the cut point sits
inside both) so a soft word edge near the cut is not lost, and `join_transcripts` drops a word
that both sides then transcribe. A caller transcribes all windows as one batch and joins.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mono_llm.audio.resample import WHISPER_SAMPLING_RATE

MAX_WINDOW_S = 30.0
DEFAULT_OVERLAP_S = 0.2
DEFAULT_SEARCH_S = 5.0
# Loudness is measured over 100 ms: long enough to average over a pitch period and a short
# plosive, short enough to find the gap between two words.
ENERGY_FRAME_S = 0.1


@dataclass(frozen=True, slots=True)
class AudioWindow:
    """Samples [start, end) of the original clip."""

    start: int
    end: int

    @property
    def num_samples(self) -> int:
        return self.end - self.start

    def start_s(self, sampling_rate: int = WHISPER_SAMPLING_RATE) -> float:
        """Where the window starts in the clip: add it to timestamps inside the window."""
        return self.start / sampling_rate

    def slice(self, samples: np.ndarray) -> np.ndarray:
        return samples[self.start : self.end]


def quietest_point(samples: np.ndarray, lo: int, hi: int, frame: int) -> int:
    """The sample in [lo, hi) at the centre of the `frame`-long stretch with the least energy.

    Ties (e.g. digital silence) go to the latest point, so windows stay as long as allowed.
    """
    if not 0 <= lo < hi <= samples.shape[0]:
        raise ValueError(f"search range [{lo}, {hi}) outside the clip of {samples.shape[0]}")
    half = max(frame // 2, 1)
    start, stop = max(lo - half, 0), min(hi + half, samples.shape[0])
    energy = np.square(samples[start:stop], dtype=np.float64)
    cumulative = np.concatenate(([0.0], np.cumsum(energy)))
    centres = np.arange(lo, hi)
    left = np.clip(centres - half, start, stop) - start
    right = np.clip(centres + half, start, stop) - start
    mean_energy = (cumulative[right] - cumulative[left]) / np.maximum(right - left, 1)
    # Round away float noise from the cumulative sum so equal silences compare equal.
    mean_energy = np.round(mean_energy, 12)
    best = mean_energy.shape[0] - 1 - int(np.argmin(mean_energy[::-1]))
    return int(centres[best])


def split_audio(
    samples: np.ndarray,
    sampling_rate: int = WHISPER_SAMPLING_RATE,
    *,
    max_window_s: float = MAX_WINDOW_S,
    overlap_s: float = DEFAULT_OVERLAP_S,
    search_s: float = DEFAULT_SEARCH_S,
) -> list[AudioWindow]:
    """Windows of at most `max_window_s` covering the clip, in order.

    Each cut is the quietest point of the last `search_s` seconds before the window limit;
    consecutive windows share `overlap_s` seconds centred on the cut. A clip that fits in one
    window gives one window (an empty clip gives none).
    """
    max_len = round(max_window_s * sampling_rate)
    overlap = round(overlap_s * sampling_rate)
    search = round(search_s * sampling_rate)
    half_overlap = overlap // 2
    if max_len <= 0 or overlap < 0 or search <= 0:
        raise ValueError("max_window_s and search_s must be positive and overlap_s >= 0")
    if search + overlap >= max_len // 2:
        raise ValueError(
            f"search_s ({search_s}) + overlap_s ({overlap_s}) must be under half of "
            f"max_window_s ({max_window_s}) so every window moves the cut forward"
        )
    total = samples.shape[0]
    frame = max(int(ENERGY_FRAME_S * sampling_rate), 1)
    windows: list[AudioWindow] = []
    start = 0
    while total - start > max_len:
        hi = start + max_len - half_overlap  # the cut plus half the overlap fits the window
        cut = quietest_point(samples, hi - search, hi, frame)
        windows.append(AudioWindow(start, cut + half_overlap))
        start = cut - half_overlap
    if total > start:
        windows.append(AudioWindow(start, total))
    return windows


_WORD = re.compile(r"[\w']+")


def _words(text: str) -> list[str]:
    return [match.lower() for match in _WORD.findall(text)]


def join_transcripts(texts: Sequence[str], *, max_repeat_words: int = 3) -> str:
    """Join the transcripts of consecutive overlapping windows into one text.

    The overlap can make both windows transcribe the word at the cut; when the next text opens
    with the same one to `max_repeat_words` words the previous one ends with (ignoring case
    and punctuation), the repeat is dropped.
    """
    joined = ""
    for text in texts:
        text = text.strip()
        if not text:
            continue
        if joined:
            tail = _words(joined)
            pieces = text.split()
            for count in range(min(max_repeat_words, len(pieces), len(tail)), 0, -1):
                if _words(" ".join(pieces[:count])) == tail[-count:]:
                    text = " ".join(pieces[count:])
                    break
            joined = f"{joined} {text}".strip() if text else joined
        else:
            joined = text
    return joined


__all__ = [
    "DEFAULT_OVERLAP_S",
    "DEFAULT_SEARCH_S",
    "MAX_WINDOW_S",
    "AudioWindow",
    "join_transcripts",
    "quietest_point",
    "split_audio",
]
