"""Qwen2-VL's image processor: dynamic resolution, 14-pixel patches merged 2×2.

An image is resized so both sides are multiples of patch_size × merge_size (28) and its area
stays within [min_pixels, max_pixels]; then it is cut into patches laid out as the vision
transformer reads them: each row is one patch with its pixels repeated over the temporal
axis (a still image is a two-frame video of itself), and patches are grouped by 2×2 merge
window. Equal to transformers' Qwen2VLImageProcessor PIL path.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from PIL import Image

from mono_llm.multimodal.decode import to_rgb
from mono_llm.multimodal.processors.base import (
    ProcessedImage,
    check_aspect_ratio,
    fingerprint,
)
from mono_llm.multimodal.processors.settings import ImageProcessorSettings


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = 56 * 56,
    max_pixels: int = 28 * 28 * 1280,
) -> tuple[int, int]:
    """(height, width) rounded to multiples of `factor`, area within [min_pixels, max_pixels],
    aspect ratio kept as closely as the rounding allows."""
    check_aspect_ratio(width, height)
    new_h = round(height / factor) * factor
    new_w = round(width / factor) * factor
    if new_h * new_w > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        new_h = max(factor, math.floor(height / beta / factor) * factor)
        new_w = max(factor, math.floor(width / beta / factor) * factor)
    elif new_h * new_w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        new_h = math.ceil(height * beta / factor) * factor
        new_w = math.ceil(width * beta / factor) * factor
    return new_h, new_w


class Qwen2VLImageProcessor:
    """Built from a preprocessor_config.json dict (either `min_pixels`/`max_pixels` or
    `size.shortest_edge`/`size.longest_edge`, which newer transformers writes)."""

    def __init__(self, config: dict[str, Any]) -> None:
        size = dict(config.get("size") or {})
        min_pixels = size.get("shortest_edge", size.get("min_pixels", 56 * 56))
        max_pixels = size.get("longest_edge", size.get("max_pixels", 28 * 28 * 1280))
        # Top-level keys win, as in transformers.
        self.min_pixels = int(config.get("min_pixels") or min_pixels)
        self.max_pixels = int(config.get("max_pixels") or max_pixels)
        self.patch_size = int(config.get("patch_size", 14))
        self.temporal_patch_size = int(config.get("temporal_patch_size", 2))
        self.merge_size = int(config.get("merge_size", 2))
        self.settings = ImageProcessorSettings.from_config(config)
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} > max_pixels {self.max_pixels}")
        own = ("min_pixels", "max_pixels", "patch_size", "temporal_patch_size", "merge_size")
        self.fingerprint = fingerprint(
            "qwen2_vl", {**self.settings.as_dict(), **{k: getattr(self, k) for k in own}}
        )

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) the image is resized to."""
        if not self.settings.do_resize:
            return height, width
        return smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)

    def grid_thw(self, width: int, height: int) -> tuple[int, int, int]:
        """Patch grid (t, h, w) of one image: t is 1 for a still image."""
        new_h, new_w = self.resized_size(width, height)
        return 1, new_h // self.patch_size, new_w // self.patch_size

    def num_image_tokens(self, width: int, height: int) -> int:
        """Placeholder tokens for an image of this size: patches / merge_size²."""
        t, h, w = self.grid_thw(width, height)
        return t * h * w // (self.merge_size**2)

    def __call__(self, image: Image.Image) -> ProcessedImage:
        image = to_rgb(image)
        new_h, new_w = self.resized_size(image.width, image.height)
        if new_h % self.factor or new_w % self.factor:
            raise ValueError(
                f"image size {new_w}x{new_h} is not a multiple of {self.factor}; enable do_resize"
            )
        if (new_h, new_w) != (image.height, image.width):
            image = image.resize((new_w, new_h), resample=self.settings.resample)
        chw = np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1))
        pixels = self.settings.to_pixel_values(chw)
        patches, grid_h, grid_w = self._patchify(pixels)
        num_tokens = grid_h * grid_w // (self.merge_size**2)
        return ProcessedImage(
            pixel_values=torch.from_numpy(patches),
            num_tokens=num_tokens,
            image_grid_thw=(1, grid_h, grid_w),
        )

    def _patchify(self, pixels: np.ndarray) -> tuple[np.ndarray, int, int]:
        channels, height, width = pixels.shape
        patch, merge, temporal = self.patch_size, self.merge_size, self.temporal_patch_size
        grid_h, grid_w = height // patch, width // patch
        # [C, gh/m, m, p, gw/m, m, p] -> [gh/m, gw/m, m, m, C, p, p]: merge windows outermost.
        blocks = pixels.reshape(
            channels, grid_h // merge, merge, patch, grid_w // merge, merge, patch
        )
        blocks = blocks.transpose(1, 4, 2, 5, 0, 3, 6)
        # A still image fills every temporal slot with itself: [..., C, T, p, p].
        blocks = np.broadcast_to(
            blocks[:, :, :, :, :, None], (*blocks.shape[:5], temporal, patch, patch)
        )
        flat = blocks.reshape(grid_h * grid_w, channels * temporal * patch * patch)
        return np.ascontiguousarray(flat, dtype=np.float32), grid_h, grid_w
