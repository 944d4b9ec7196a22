"""Decoding: every accepted format, EXIF orientation, transparency, and the pixel limits."""

from __future__ import annotations

import io

import numpy as np
import pytest
from multimodal_helpers import encode, make_image
from PIL import Image

from mono_llm.multimodal import (
    ImageDecodeError,
    MediaTooLargeError,
    decode_image,
    image_content_hash,
)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "GIF", "WEBP", "JPEG"])
def test_all_formats_decode_to_rgb(fmt: str) -> None:
    source = make_image(40, 30, seed=1)
    lossless = fmt in ("PNG", "BMP")
    kwargs = {"lossless": True} if fmt == "WEBP" else {}
    image = decode_image(encode(source, fmt, **kwargs))
    assert image.mode == "RGB"
    assert image.size == (40, 30)
    if lossless or fmt == "WEBP":
        assert np.array_equal(np.asarray(image), np.asarray(source))


def test_grayscale_and_palette_become_rgb() -> None:
    gray = decode_image(encode(make_image(8, 8, mode="L")))
    assert gray.mode == "RGB"
    pixels = np.asarray(gray)
    assert np.array_equal(pixels[..., 0], pixels[..., 2])


def test_alpha_is_composited_on_white() -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    rgba.putpixel((0, 0), (0, 0, 255, 255))  # one opaque blue pixel
    image = decode_image(encode(rgba))
    assert image.getpixel((1, 1)) == (255, 255, 255)
    assert image.getpixel((0, 0)) == (0, 0, 255)


def test_gif_transparency_is_composited_on_white() -> None:
    frame = Image.new("P", (4, 4), 0)
    frame.putpalette([0, 0, 0] + [255, 0, 0] + [0] * 762)
    frame.putpixel((0, 0), 1)
    data = encode(frame, "GIF", transparency=0)
    image = decode_image(data)
    assert image.getpixel((0, 0)) == (255, 0, 0)
    assert image.getpixel((2, 2)) == (255, 255, 255)


def test_animated_gif_gives_first_frame() -> None:
    frames = [Image.new("RGB", (6, 6), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    image = decode_image(buffer.getvalue())
    assert image.getpixel((3, 3)) == (255, 0, 0)


def test_exif_orientation_applied() -> None:
    source = Image.new("RGB", (20, 10), (0, 0, 0))
    source.paste((255, 255, 255), (0, 0, 5, 5))  # white mark at the top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored image must be rotated 90° clockwise to display upright
    data = encode(source, "JPEG", exif=exif.tobytes(), quality=95)
    image = decode_image(data)
    assert image.size == (10, 20)
    # Top-left of the stored image lands at the top-right after a clockwise rotation.
    assert sum(image.getpixel((8, 1))) > 600
    assert sum(image.getpixel((1, 1))) < 100


def test_pixel_limit_checked_before_decoding() -> None:
    data = encode(make_image(100, 100))
    assert decode_image(data, max_pixels=10_000).size == (100, 100)
    with pytest.raises(MediaTooLargeError, match="100x100"):
        decode_image(data, max_pixels=9_999)


def test_decompression_bomb_refused() -> None:
    # A 1-bit PNG of a 20000x20000 canvas compresses to a few kB but decodes to 400 Mpx.
    bomb = Image.new("1", (20000, 20000))
    data = encode(bomb, "PNG", optimize=True)
    assert len(data) < 200_000
    with pytest.raises(MediaTooLargeError, match="pixels"):
        decode_image(data)


@pytest.mark.parametrize(
    "data",
    [b"", b"<html>not an image</html>", b"\x89PNG\r\n\x1a\n" + b"\0" * 20, b"GIF89a"],
)
def test_garbage_refused(data: bytes) -> None:
    with pytest.raises(ImageDecodeError):
        decode_image(data)


def test_truncated_image_refused() -> None:
    data = encode(make_image(64, 64), "PNG")
    with pytest.raises(ImageDecodeError):
        decode_image(data[: len(data) // 2])


def test_unlisted_format_refused() -> None:
    buffer = io.BytesIO()
    make_image(8, 8).save(buffer, "TIFF")
    with pytest.raises(ImageDecodeError, match="JPEG, PNG"):
        decode_image(buffer.getvalue())


def test_content_hash_is_sha256_of_bytes() -> None:
    a, b = encode(make_image(seed=1)), encode(make_image(seed=2))
    assert image_content_hash(a) == image_content_hash(bytes(a))
    assert image_content_hash(a) != image_content_hash(b)
    assert len(image_content_hash(a)) == 64
