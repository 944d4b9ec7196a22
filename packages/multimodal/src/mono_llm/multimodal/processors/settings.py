"""The preprocessor_config.json fields every image processor reads the same way.

CLIP's and Qwen2-VL's processors differ in how they size an image, but share the resize
filter and the pixel arithmetic after it (rescale to [0, 1], normalize per channel), with the
same keys and defaults as transformers' processors.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from mono_llm.multimodal.processors.base import (
    BICUBIC,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    channel_values,
    rescale_and_normalize,
)


@dataclass(frozen=True, slots=True)
class ImageProcessorSettings:
    do_resize: bool
    resample: int  # a PIL resampling filter
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ImageProcessorSettings:
        return cls(
            do_resize=bool(config.get("do_resize", True)),
            resample=int(config.get("resample", BICUBIC)),
            do_rescale=bool(config.get("do_rescale", True)),
            rescale_factor=float(config.get("rescale_factor", 1 / 255)),
            do_normalize=bool(config.get("do_normalize", True)),
            image_mean=channel_values(config.get("image_mean"), OPENAI_CLIP_MEAN),
            image_std=channel_values(config.get("image_std"), OPENAI_CLIP_STD),
        )

    def as_dict(self) -> dict[str, Any]:
        """Field name -> value, for a processor's fingerprint."""
        return dataclasses.asdict(self)

    def to_pixel_values(self, chw: np.ndarray) -> np.ndarray:
        """uint8 [C, H, W] -> float32 [C, H, W], rescaled and normalized as configured."""
        return rescale_and_normalize(
            chw,
            do_rescale=self.do_rescale,
            rescale_factor=self.rescale_factor,
            do_normalize=self.do_normalize,
            mean=self.image_mean,
            std=self.image_std,
        )
