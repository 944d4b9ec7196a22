"""Decode image bytes with Pillow into an upright RGB image, within pixel limits."""

from __future__ import annotations

import contextlib
import hashlib
import io

from PIL import Image, ImageOps, UnidentifiedImageError

from mono_llm.multimodal.errors import ImageDecodeError, MediaTooLargeError

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000


def image_content_hash(data: bytes) -> str:
    """sha256 hex digest of the encoded bytes: the identity of an image for caches.

    The same bytes from any source (http, data:, file) give the same hash; the engine puts it
    into prefix-cache keys so two different images never share cached blocks.
    """
    return hashlib.sha256(data).hexdigest()


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode `data` (JPEG, PNG, WEBP, GIF or BMP) into an RGB image.

    The pixel count is checked from the header before any pixel is decoded (a small file
    can claim a huge canvas); animations give their first frame; EXIF orientation is applied
    so the image is upright as a viewer shows it; transparency is composited onto white, as
    transformers' processors do, so both see the same pixels.
    """
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as error:
        raise MediaTooLargeError(f"image has too many pixels: {error}") from error
    except UnidentifiedImageError as error:
        raise ImageDecodeError(
            "the data is not a JPEG, PNG, WEBP, GIF or BMP image that can be decoded"
        ) from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageDecodeError(f"cannot decode image: {error}") from error
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"image has an empty size {width}x{height}")
    if width * height > max_pixels:
        raise MediaTooLargeError(
            f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}"
        )
    try:
        image.seek(0)
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        raise ImageDecodeError(f"cannot decode {image.format} image: {error}") from error
    # Malformed EXIF: keep the stored orientation rather than refuse the image.
    with contextlib.suppress(OSError, SyntaxError, ValueError, KeyError, TypeError):
        image = ImageOps.exif_transpose(image)
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB version of `image`, with any transparency composited onto a white background."""
    if image.mode == "RGB":
        return image
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")
