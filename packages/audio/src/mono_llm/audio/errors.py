"""Typed errors for bad audio input.

Every error subclasses `ValueError`, so a caller that maps ValueError to "bad request" (HTTP 400)
handles them without knowing this package, and one that wants to tell them apart (413 for a too
large upload) can. Messages are written for the person who sent the audio: they say what was
wrong and what the limit is, never a decoder's stack trace.
"""

from __future__ import annotations


class AudioError(ValueError):
    """Base class: the audio input cannot be used."""


class AudioDecodeError(AudioError):
    """The bytes are empty, corrupt, truncated or not audio in a supported format."""


class AudioTooLargeError(AudioError):
    """The encoded input is larger than the configured byte limit."""

    def __init__(self, size_bytes: int, max_bytes: int) -> None:
        self.size_bytes = size_bytes
        self.max_bytes = max_bytes
        super().__init__(f"audio file is {_size(size_bytes)}; the limit is {_size(max_bytes)}")


class AudioTooLongError(AudioError):
    """The decoded audio lasts longer than the configured duration limit."""

    def __init__(self, duration_s: float, max_duration_s: float, *, at_least: bool = False) -> None:
        self.duration_s = duration_s
        self.max_duration_s = max_duration_s
        qualifier = "at least " if at_least else ""
        super().__init__(
            f"audio lasts {qualifier}{duration_s:.1f} s; the limit is {max_duration_s:.1f} s"
        )


def _size(num_bytes: int) -> str:
    """Sizes as upload limits are usually meant (and as vLLM counts them): 1 MB = 1024 * 1024."""
    if num_bytes < 1024 * 1024:
        return f"{num_bytes} bytes"
    return f"{num_bytes / (1024 * 1024):.1f}".rstrip("0").rstrip(".") + " MB"


__all__ = ["AudioDecodeError", "AudioError", "AudioTooLargeError", "AudioTooLongError"]
