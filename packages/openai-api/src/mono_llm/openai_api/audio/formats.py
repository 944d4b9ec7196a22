"""Subtitle renderings of timed segments: SubRip (srt) and WebVTT (vtt)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _clock(seconds: float, decimal: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def to_srt(segments: Sequence[Any]) -> str:
    """Numbered cues `HH:MM:SS,mmm --> HH:MM:SS,mmm`, one blank line between cues."""
    cues = [
        f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text.strip()}\n"
        for i, s in enumerate(segments, start=1)
    ]
    return "\n".join(cues)


def to_vtt(segments: Sequence[Any]) -> str:
    """`WEBVTT` header, then cues `HH:MM:SS.mmm --> HH:MM:SS.mmm`."""
    cues = [
        f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text.strip()}\n" for s in segments
    ]
    return "WEBVTT\n\n" + "\n".join(cues)
