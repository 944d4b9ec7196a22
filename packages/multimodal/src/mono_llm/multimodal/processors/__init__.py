"""Image processors of the supported vision-language models, and the one table naming them.

A processor is built from what a model folder's preprocessor_config.json holds (plus its
config.json where the token count lives there), never from transformers at runtime.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mono_llm.multimodal.processors.base import ImageProcessor, ProcessedImage
from mono_llm.multimodal.processors.clip import ClipImageProcessor, llava_num_image_tokens
from mono_llm.multimodal.processors.qwen2_vl import Qwen2VLImageProcessor, smart_resize


def _clip(preprocessor: dict[str, Any], model: dict[str, Any]) -> ImageProcessor:
    return ClipImageProcessor(
        preprocessor, num_tokens=llava_num_image_tokens(model) if model else None
    )


def _qwen2_vl(preprocessor: dict[str, Any], model: dict[str, Any]) -> ImageProcessor:
    return Qwen2VLImageProcessor(preprocessor)


# transformers' image_processor_type (without a Fast/Pil suffix) -> builder. The one place a
# processor kind is named; model_type is the fallback for configs that omit the type.
PROCESSORS: dict[str, Callable[[dict[str, Any], dict[str, Any]], ImageProcessor]] = {
    "CLIPImageProcessor": _clip,
    "Qwen2VLImageProcessor": _qwen2_vl,
}
MODEL_TYPE_PROCESSOR = {
    "llava": "CLIPImageProcessor",
    "qwen2_vl": "Qwen2VLImageProcessor",
    "qwen2_5_vl": "Qwen2VLImageProcessor",
}


def image_processor_from_config(
    preprocessor_config: dict[str, Any], model_config: dict[str, Any] | None = None
) -> ImageProcessor:
    """The processor a model's preprocessor_config.json (and config.json) describe."""
    model_config = model_config or {}
    kind = str(preprocessor_config.get("image_processor_type") or "")
    for suffix in ("Fast", "Pil"):
        kind = kind.removesuffix(suffix)
    if kind not in PROCESSORS:
        kind = MODEL_TYPE_PROCESSOR.get(str(model_config.get("model_type")), kind)
    if kind not in PROCESSORS:
        raise ValueError(
            f"unsupported image processor {kind or '(none)'!r}; supported: {', '.join(PROCESSORS)}"
        )
    return PROCESSORS[kind](preprocessor_config, model_config)


def load_image_processor(model_dir: str | Path) -> ImageProcessor:
    """Read `model_dir`'s image-processor config (and config.json) and build its processor.

    The config is preprocessor_config.json, as model folders ship it; folders saved by
    newer transformers may instead nest it under "image_processor" in processor_config.json.
    """
    folder = Path(model_dir)
    preprocessor_path = folder / "preprocessor_config.json"
    processor_path = folder / "processor_config.json"
    if preprocessor_path.is_file():
        preprocessor = json.loads(preprocessor_path.read_text())
    elif processor_path.is_file() and "image_processor" in (
        nested := json.loads(processor_path.read_text())
    ):
        preprocessor = nested["image_processor"]
    else:
        raise FileNotFoundError(f"{folder} has no preprocessor_config.json")
    config_path = folder / "config.json"
    model = json.loads(config_path.read_text()) if config_path.is_file() else {}
    return image_processor_from_config(preprocessor, model)


__all__ = [
    "ClipImageProcessor",
    "ImageProcessor",
    "ProcessedImage",
    "Qwen2VLImageProcessor",
    "image_processor_from_config",
    "llava_num_image_tokens",
    "load_image_processor",
    "smart_resize",
]
