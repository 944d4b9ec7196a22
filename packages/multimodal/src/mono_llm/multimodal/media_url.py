"""Turn a media URL (http(s)://, data:, file://) into the bytes it names, within limits.

The async functions are the API the server uses; `fetch_image_bytes_sync` is for scripts
and tests that have no event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from mono_llm.multimodal.errors import (
    MediaFetchError,
    MediaForbiddenError,
    MediaTooLargeError,
    short_url,
)
from mono_llm.multimodal.http_fetch import fetch_http
from mono_llm.multimodal.media_config import MediaConfig

T = TypeVar("T")


async def fetch_image_bytes(url: str, config: MediaConfig | None = None) -> bytes:
    """The encoded image bytes that `url` names, after every check in `config`.

    Raises `MediaForbiddenError`, `MediaFetchError` or `MediaTooLargeError` (all ValueErrors).
    """
    config = config or MediaConfig()
    if not isinstance(url, str) or not url:
        raise MediaFetchError("the image URL is empty")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in ("http", "https"):
        return await fetch_http(url, config)
    if scheme == "data":
        return decode_data_url(url, config)
    if scheme == "file":
        return await asyncio.to_thread(read_file_url, url, config)
    raise MediaForbiddenError(
        f"unsupported image URL {short_url(url)!r}: use http(s)://, data:image/...;base64, "
        "or file:// (when the server allows a local media path)"
    )


def fetch_image_bytes_sync(url: str, config: MediaConfig | None = None) -> bytes:
    """`fetch_image_bytes` for callers without a running event loop."""
    return run_sync(fetch_image_bytes(url, config))


def decode_data_url(url: str, config: MediaConfig) -> bytes:
    """The bytes of a `data:image/<type>;base64,<payload>` URL (strict base64, size-limited)."""
    header, sep, payload = url.partition(",")
    if not sep:
        raise MediaFetchError("malformed data: URL: no ',' before the payload")
    params = [part.strip().lower() for part in header[len("data:") :].split(";")]
    media_type = params[0]
    if not media_type.startswith("image/"):
        raise MediaFetchError(
            f"data: URL has media type {media_type or 'text/plain'!r}; an image/* type is required"
        )
    if "base64" not in params[1:]:
        raise MediaFetchError("data: URLs for images must be base64-encoded (';base64,')")
    limit = config.max_image_bytes
    # 4 characters encode 3 bytes: refuse before decoding anything too long.
    if (len(payload) // 4) * 3 > limit + 3:
        raise MediaTooLargeError(
            f"data: URL image is about {(len(payload) // 4) * 3} bytes, over the limit of {limit} bytes"
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise MediaFetchError(f"data: URL payload is not valid base64: {error}") from error
    if len(data) > limit:
        raise MediaTooLargeError(
            f"data: URL image is {len(data)} bytes, over the limit of {limit} bytes"
        )
    if not data:
        raise MediaFetchError("data: URL payload is empty")
    return data


def read_file_url(url: str, config: MediaConfig) -> bytes:
    """The bytes of a `file://` URL under `config.allowed_local_media_path`, symlinks resolved."""
    if config.allowed_local_media_path is None:
        raise MediaForbiddenError(
            "file:// image URLs are disabled on this server (no allowed_local_media_path)"
        )
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise MediaForbiddenError(f"file:// URL with a remote host {parts.netloc!r} is not allowed")
    if parts.query or parts.fragment:
        raise MediaFetchError("file:// URLs must not have a query or fragment")
    requested = Path(unquote(parts.path))
    if not requested.is_absolute() or "\x00" in str(requested):
        raise MediaFetchError(f"file:// URL {short_url(url)!r} has no absolute path")
    root = Path(config.allowed_local_media_path).resolve()
    try:
        resolved = requested.resolve(strict=True)
    except (OSError, RuntimeError) as error:
        # Report a missing file only when it would have been allowed, so the error does not
        # reveal which paths exist outside the allowed folder.
        if not Path(os.path.abspath(requested)).is_relative_to(root):
            raise MediaForbiddenError(_outside(root)) from error
        raise MediaFetchError(f"no readable file at {short_url(url)!r}") from error
    if not resolved.is_relative_to(root):
        raise MediaForbiddenError(_outside(root))
    if not resolved.is_file():
        raise MediaFetchError(f"{short_url(url)!r} is not a regular file")
    limit = config.max_image_bytes
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(resolved, flags)
    except OSError as error:
        raise MediaFetchError(f"cannot open {short_url(url)!r}: {error.strerror}") from error
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise MediaTooLargeError(f"image file is over the limit of {limit} bytes")
    return data


def _outside(root: Path) -> str:
    return f"file:// URL points outside the allowed local media path {str(root)!r}"


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` to completion from synchronous code (never from inside a loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    coroutine.close()
    raise RuntimeError("called a *_sync media function inside an event loop; await the async one")
