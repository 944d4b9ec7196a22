"""LLaVA-1.5's image processor (CLIP): shortest-edge resize, center crop, rescale, normalize.

Equal to transformers' CLIPImageProcessor PIL path: the resize is Pillow's (bicubic by
default) on uint8 pixels, sizes are rounded the way transformers rounds them, and the
float casts follow its numpy code, so pixel values match to the last bit.
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


class ClipImageProcessor:
    """Built from a preprocessor_config.json dict; `num_tokens` from the model config."""

    def __init__(self, config: dict[str, Any], *, num_tokens: int | None = None) -> None:
        size = config.get("size", {"shortest_edge": 224})
        if isinstance(size, int):
            size = {"shortest_edge": size}
        if "shortest_edge" in size:
            self.shortest_edge: int | None = int(size["shortest_edge"])
            self.resize_to: tuple[int, int] | None = None
        elif "height" in size and "width" in size:
            self.shortest_edge = None
            self.resize_to = (int(size["height"]), int(size["width"]))
        else:
            raise ValueError(f"unsupported CLIP size {size!r}: need shortest_edge or height/width")
        crop = config.get("crop_size", {"height": 224, "width": 224})
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
        self.crop_size = (int(crop["height"]), int(crop["width"]))
        self.do_center_crop = bool(config.get("do_center_crop", True))
        self.settings = ImageProcessorSettings.from_config(config)
        self.num_tokens = num_tokens
        own = ("shortest_edge", "resize_to", "crop_size", "do_center_crop", "num_tokens")
        self.fingerprint = fingerprint(
            "clip", {**self.settings.as_dict(), **{k: getattr(self, k) for k in own}}
        )

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) of pixel_values for an image of this size."""
        if self.do_center_crop:
            return self.crop_size
        if self.settings.do_resize:
            return self._resized_size(height, width)
        return height, width

    def num_image_tokens(self, width: int, height: int) -> int:
        """Placeholder tokens per image: fixed by the vision tower, whatever the image size."""
        if self.num_tokens is None:
            raise ValueError("this CLIP processor was built without the model's token count")
        return self.num_tokens

    def __call__(self, image: Image.Image) -> ProcessedImage:
        image = to_rgb(image)
        if self.settings.do_resize:
            height, width = self._resized_size(image.height, image.width)
            image = image.resize((width, height), resample=self.settings.resample)
        array = np.asarray(image)  # [H, W, 3] uint8
        if self.do_center_crop:
            array = center_crop(array, self.crop_size)
        chw = np.ascontiguousarray(array.transpose(2, 0, 1))
        pixels = self.settings.to_pixel_values(chw)
        return ProcessedImage(
            pixel_values=torch.from_numpy(pixels), num_tokens=self.num_tokens or 0
        )

    def _resized_size(self, height: int, width: int) -> tuple[int, int]:
        if self.resize_to is not None:
            return self.resize_to
        assert self.shortest_edge is not None
        # A 1x4000 image would resize to 336x1344000 before the crop: refuse such shapes.
        check_aspect_ratio(width, height)
        short, long = (width, height) if width <= height else (height, width)
        # int() truncation, as torchvision's and transformers' size rule.
        new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)


def center_crop(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Crop [H, W, C] to `size` around the center; pad with zeros where the image is smaller
    (the offsets round as transformers' do, so odd margins land on the same side)."""
    height, width = array.shape[:2]
    crop_h, crop_w = size
    top = (height - crop_h) // 2
    left = (width - crop_w) // 2
    if top >= 0 and left >= 0:
        return array[top : top + crop_h, left : left + crop_w]
    new_h, new_w = max(crop_h, height), max(crop_w, width)
    padded = np.zeros((new_h, new_w, *array.shape[2:]), dtype=array.dtype)
    top_pad = math.ceil((new_h - height) / 2)
    left_pad = math.ceil((new_w - width) / 2)
    padded[top_pad : top_pad + height, left_pad : left_pad + width] = array
    top, left = top + top_pad, left + left_pad
    return padded[max(0, top) : min(new_h, top + crop_h), max(0, left) : min(new_w, left + crop_w)]


def llava_num_image_tokens(model_config: dict[str, Any]) -> int:
    """Placeholder tokens per image for a LLaVA-1.5 model config (config.json as a dict).

    The CLIP tower yields (image_size / patch_size)² patch features plus a CLS feature; the
    "default" feature-select strategy drops the CLS one: 336/14 → 24² = 576.
    """
    vision = model_config.get("vision_config") or {}
    image_size = int(vision.get("image_size", 224))
    patch_size = int(vision.get("patch_size", 32))
    patches = (image_size // patch_size) ** 2
    strategy = model_config.get("vision_feature_select_strategy", "default")
    if strategy == "default":
        return patches
    if strategy == "full":
        return patches + 1
    raise ValueError(f"unknown vision_feature_select_strategy {strategy!r}")
