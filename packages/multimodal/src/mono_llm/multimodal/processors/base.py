"""What every image processor returns, and the helpers they share."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from mono_llm.multimodal.errors import ImageProcessingError

# The mean and standard deviation CLIP was trained with; also Qwen2-VL's defaults.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, the value preprocessor_config.json files store
# Qwen2-VL's processor refuses longer/shorter > 200; the same bound keeps CLIP's
# shortest-edge resize from building a huge intermediate image for a sliver-shaped input.
MAX_ASPECT_RATIO = 200


@dataclass(frozen=True, slots=True)
class ProcessedImage:
    """One image turned into model inputs.

    pixel_values: float32; [3, H, W] for CLIP-style towers, [num_patches, C*T*P*P] for
    Qwen2-VL (patches of one image, in the order its vision transformer expects).
    image_grid_thw: (t, h, w) patch grid for Qwen2-VL, None for fixed-size towers.
    num_tokens: placeholder tokens this image expands to in the prompt.
    content_hash: sha256 of the encoded image bytes ("" when processed from a bare PIL image).
    """

    pixel_values: torch.Tensor
    num_tokens: int
    image_grid_thw: tuple[int, int, int] | None = None
    content_hash: str = ""

    @property
    def nbytes(self) -> int:
        return self.pixel_values.numel() * self.pixel_values.element_size()


class ImageProcessor(Protocol):
    """An image processor: PIL RGB image in, `ProcessedImage` out, with a stable fingerprint."""

    fingerprint: str

    def __call__(self, image: Image.Image) -> ProcessedImage: ...

    def num_image_tokens(self, width: int, height: int) -> int: ...


def fingerprint(kind: str, params: dict[str, Any]) -> str:
    """Short stable hash of a processor's effective parameters, for cache keys."""
    blob = json.dumps({"kind": kind, **params}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def rescale_and_normalize(
    chw: np.ndarray,
    *,
    do_rescale: bool,
    rescale_factor: float,
    do_normalize: bool,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> np.ndarray:
    """uint8 [C, H, W] to float32, with the same casts as transformers' numpy path so values
    match bit for bit: rescale in float64 then cast to float32; normalize in float32."""
    out = chw
    if do_rescale:
        out = (out.astype(np.float64) * rescale_factor).astype(np.float32)
    if do_normalize:
        if not np.issubdtype(out.dtype, np.floating):
            out = out.astype(np.float32)
        mean_array = np.asarray(mean, dtype=out.dtype)[:, None, None]
        std_array = np.asarray(std, dtype=out.dtype)[:, None, None]
        out = (out - mean_array) / std_array
    return np.ascontiguousarray(out, dtype=np.float32)


def check_aspect_ratio(width: int, height: int) -> None:
    """Refuse images whose longer side is over MAX_ASPECT_RATIO times the shorter one."""
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        raise ImageProcessingError(
            f"image aspect ratio {ratio:.0f}:1 ({width}x{height}) is over {MAX_ASPECT_RATIO}:1, "
            "which this model's image processor does not accept"
        )


def channel_values(value: Any, default: tuple[float, ...]) -> tuple[float, ...]:
    """Mean/std from a config: a list of three, a single float, or absent."""
    if value is None:
        return default
    if isinstance(value, (int, float)):
        return (float(value),) * 3
    values = tuple(float(v) for v in value)
    if len(values) != 3:
        raise ValueError(f"expected 3 channel values, got {len(values)}")
    return values
