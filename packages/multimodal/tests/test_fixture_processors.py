"""The processors built from the tiny vision fixtures' folders equal transformers' processors
loaded from the same folders, token counts included (when mono-llm-core is installed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from multimodal_helpers import make_image

from mono_llm.multimodal import ClipImageProcessor, Qwen2VLImageProcessor, load_image_processor

transformers = pytest.importorskip("transformers")
testing = pytest.importorskip("mono_llm.core.testing")

SIZES = [(80, 60), (30, 90), (56, 56), (300, 200)]


def test_tiny_llava_processor_matches_transformers() -> None:
    path = testing.fixture_path("tiny-llava")
    ours = load_image_processor(path)
    assert isinstance(ours, ClipImageProcessor)
    theirs = transformers.AutoProcessor.from_pretrained(path)
    for width, height in SIZES:
        image = make_image(width, height, seed=width)
        mine = ours(image)
        hf = theirs(images=image, text="USER: <image>\nhi ASSISTANT:", return_tensors="np")
        np.testing.assert_allclose(
            mine.pixel_values.numpy(), hf["pixel_values"][0], rtol=0, atol=1e-6
        )
        assert mine.num_tokens == int((hf["input_ids"] == theirs.image_token_id).sum()) == 16


def test_tiny_qwen2_vl_processor_matches_transformers() -> None:
    path = testing.fixture_path("tiny-qwen2-vl")
    ours = load_image_processor(path)
    assert isinstance(ours, Qwen2VLImageProcessor)
    theirs = transformers.AutoImageProcessor.from_pretrained(path)
    for width, height in SIZES:
        image = make_image(width, height, seed=height)
        mine = ours(image)
        hf = theirs(images=image, return_tensors="np")
        np.testing.assert_allclose(mine.pixel_values.numpy(), hf["pixel_values"], rtol=0, atol=1e-6)
        assert mine.image_grid_thw == tuple(int(v) for v in hf["image_grid_thw"][0])
        assert 4 <= mine.num_tokens <= 64


def test_nested_processor_config_is_read(tmp_path: Path) -> None:
    source = testing.fixture_path("tiny-llava")
    shutil.copyfile(source / "config.json", tmp_path / "config.json")
    nested = json.loads((source / "processor_config.json").read_text())
    assert "image_processor" in nested
    (tmp_path / "processor_config.json").write_text(json.dumps(nested))
    assert load_image_processor(tmp_path).fingerprint == load_image_processor(source).fingerprint
