"""Typed errors for media inputs.

Every error is a `ValueError`: a bad image is bad client input, and the server turns any of
these into a 400 whose message is the exception text. The messages name the limit or rule
that was hit and never echo more than a short prefix of the URL.
"""

from __future__ import annotations


class MediaError(ValueError):
    """Base class of every error this package raises for a media input."""


class MediaFetchError(MediaError):
    """The media could not be retrieved: unreachable host, HTTP error status, timeout,
    a body that is not an image, a malformed URL or a missing file."""


class MediaTooLargeError(MediaError):
    """The media exceeds a configured limit (bytes downloaded, or pixels once decoded)."""


class MediaForbiddenError(MediaError):
    """The URL points somewhere this server must not read: a private or reserved network
    address, a scheme that is not allowed, or a file outside the allowed local folder."""


class ImageDecodeError(MediaError):
    """The bytes were retrieved but are not a decodable JPEG, PNG, WEBP, GIF or BMP image."""


class ImageProcessingError(MediaError):
    """The image decoded, but the model's processor cannot take it (an aspect ratio so
    extreme that resizing would need an enormous intermediate image)."""


def short_url(url: str, limit: int = 80) -> str:
    """A prefix of `url` that is safe to put into an error message (data: URLs are long)."""
    return url if len(url) <= limit else url[: limit - 3] + "..."
