"""Pixel values equal transformers' own processors over sizes and aspect ratios."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from multimodal_helpers import make_image

from mono_llm.multimodal import (
    ClipImageProcessor,
    ImageProcessingError,
    Qwen2VLImageProcessor,
    image_processor_from_config,
    llava_num_image_tokens,
    load_image_processor,
    smart_resize,
)

transformers = pytest.importorskip("transformers")

# preprocessor_config.json of llava-hf/llava-1.5-7b-hf (values as published).
LLAVA_15 = {
    "crop_size": {"height": 336, "width": 336},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "CLIPImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 336},
}
LLAVA_15_MODEL = {
    "model_type": "llava",
    "vision_feature_select_strategy": "default",
    "vision_config": {"image_size": 336, "patch_size": 14},
}
# preprocessor_config.json of Qwen/Qwen2-VL-2B-Instruct.
QWEN2_VL = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor",
}

SIZES = [(336, 336), (640, 480), (480, 640), (101, 37), (37, 101), (1000, 203), (17, 17)]


def hf_clip(config: dict) -> object:
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    kwargs = {k: v for k, v in config.items() if k != "image_processor_type"}
    return CLIPImageProcessorPil(**kwargs)


def hf_qwen(config: dict) -> object:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    kwargs = {k: v for k, v in config.items() if k != "image_processor_type"}
    return Qwen2VLImageProcessorPil(**kwargs)


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_clip_matches_transformers(width: int, height: int) -> None:
    image = make_image(width, height, seed=width * 7 + height)
    ours = ClipImageProcessor(LLAVA_15, num_tokens=576)(image)
    theirs = hf_clip(LLAVA_15)(images=image, return_tensors="np")["pixel_values"][0]
    assert ours.pixel_values.dtype.is_floating_point and tuple(ours.pixel_values.shape) == (
        3,
        336,
        336,
    )
    np.testing.assert_allclose(ours.pixel_values.numpy(), theirs, rtol=0, atol=1e-6)
    assert ours.num_tokens == 576 and ours.image_grid_thw is None


@pytest.mark.parametrize(
    "config",
    [
        # Crop larger than the resized image: transformers pads with zeros.
        {"size": {"shortest_edge": 32}, "crop_size": {"height": 40, "width": 36}},
        # Integer sizes of old configs, bilinear resample, no crop.
        {"size": 48, "crop_size": 48, "resample": 2, "do_center_crop": False},
        # Fixed height/width resize, custom mean/std.
        {
            "size": {"height": 30, "width": 50},
            "do_center_crop": False,
            "image_mean": [0.5] * 3,
            "image_std": [0.5] * 3,
        },
    ],
)
@pytest.mark.parametrize(("width", "height"), [(64, 48), (31, 77)])
def test_clip_variants_match_transformers(config: dict, width: int, height: int) -> None:
    image = make_image(width, height, seed=3)
    ours = ClipImageProcessor(config)(image).pixel_values.numpy()
    theirs = hf_clip(config)(images=image, return_tensors="np")["pixel_values"][0]
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


def test_clip_converts_rgba_like_transformers() -> None:
    image = make_image(50, 40, seed=5, mode="RGBA")
    ours = ClipImageProcessor(LLAVA_15)(image).pixel_values.numpy()
    theirs = hf_clip(LLAVA_15)(images=image, return_tensors="np")["pixel_values"][0]
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


QWEN_SIZES = [(640, 480), (480, 640), (28, 28), (57, 300), (1000, 1000), (10, 10), (2000, 30)]


@pytest.mark.parametrize(("width", "height"), QWEN_SIZES)
@pytest.mark.parametrize("max_pixels", [12845056, 56 * 56 * 4])
def test_qwen2_vl_matches_transformers(width: int, height: int, max_pixels: int) -> None:
    config = {**QWEN2_VL, "max_pixels": max_pixels}
    image = make_image(width, height, seed=width + 3 * height)
    ours = Qwen2VLImageProcessor(config)(image)
    theirs = hf_qwen(config)(images=image, return_tensors="np")
    grid = tuple(int(v) for v in theirs["image_grid_thw"][0])
    assert ours.image_grid_thw == grid
    assert tuple(ours.pixel_values.shape) == theirs["pixel_values"].shape
    np.testing.assert_allclose(ours.pixel_values.numpy(), theirs["pixel_values"], rtol=0, atol=1e-6)
    assert ours.num_tokens == grid[0] * grid[1] * grid[2] // 4
    assert Qwen2VLImageProcessor(config).num_image_tokens(width, height) == ours.num_tokens


def test_qwen2_vl_size_dict_form_matches_transformers() -> None:
    # Newer configs write the pixel bounds as size.shortest_edge / size.longest_edge.
    config = {"size": {"shortest_edge": 28 * 28 * 4, "longest_edge": 28 * 28 * 9}, "merge_size": 2}
    image = make_image(300, 200, seed=9)
    ours = Qwen2VLImageProcessor(config)(image)
    theirs = hf_qwen(config)(images=image, return_tensors="np")
    np.testing.assert_allclose(ours.pixel_values.numpy(), theirs["pixel_values"], rtol=0, atol=1e-6)
    assert ours.image_grid_thw == tuple(int(v) for v in theirs["image_grid_thw"][0])


def test_qwen2_vl_token_count_matches_transformers_processor_formula() -> None:
    hf = hf_qwen(QWEN2_VL)
    ours = Qwen2VLImageProcessor(QWEN2_VL)
    for width, height in [(512, 512), (1920, 1080), (33, 900)]:
        assert (
            ours.num_image_tokens(width, height)
            == hf.get_number_of_image_patches(height, width) // 4
        )
    assert ours.num_image_tokens(512, 512) == (504 // 28) ** 2  # 512 rounds to 504: 18x18 merged


def test_smart_resize_bounds_and_refusals() -> None:
    for height, width in [(1, 1), (100, 2000), (4000, 3000), (28, 28)]:
        new_h, new_w = smart_resize(height, width, 28, 3136, 28 * 28 * 64)
        assert new_h % 28 == 0 and new_w % 28 == 0
        assert 3136 <= new_h * new_w <= 28 * 28 * 64
    with pytest.raises(ImageProcessingError, match="aspect ratio"):
        smart_resize(10, 2001)
    with pytest.raises(ValueError):  # a ValueError, as transformers raises
        Qwen2VLImageProcessor(QWEN2_VL)(make_image(2010, 10))


def test_clip_refuses_sliver_images() -> None:
    # 1x400 would resize to 336x134400 before cropping; refused like Qwen2-VL's processor does.
    with pytest.raises(ImageProcessingError, match="aspect ratio"):
        ClipImageProcessor(LLAVA_15)(make_image(1, 400))
    assert ClipImageProcessor(LLAVA_15)(make_image(2, 400)).pixel_values.shape == (3, 336, 336)


def test_llava_token_count() -> None:
    assert llava_num_image_tokens(LLAVA_15_MODEL) == 576
    assert (
        llava_num_image_tokens({**LLAVA_15_MODEL, "vision_feature_select_strategy": "full"}) == 577
    )


def test_processor_from_config_and_folder(tmp_path: Path) -> None:
    clip = image_processor_from_config(LLAVA_15, LLAVA_15_MODEL)
    assert isinstance(clip, ClipImageProcessor) and clip.num_image_tokens(10, 10) == 576
    qwen = image_processor_from_config(
        {**QWEN2_VL, "image_processor_type": "Qwen2VLImageProcessorFast"}
    )
    assert isinstance(qwen, Qwen2VLImageProcessor)
    assert isinstance(
        image_processor_from_config({}, {"model_type": "qwen2_5_vl"}), Qwen2VLImageProcessor
    )
    with pytest.raises(ValueError, match="unsupported image processor"):
        image_processor_from_config({"image_processor_type": "SiglipImageProcessor"})
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(LLAVA_15))
    (tmp_path / "config.json").write_text(json.dumps(LLAVA_15_MODEL))
    loaded = load_image_processor(tmp_path)
    assert isinstance(loaded, ClipImageProcessor) and loaded.fingerprint == clip.fingerprint
    with pytest.raises(FileNotFoundError):
        load_image_processor(tmp_path / "nowhere")


def test_fingerprint_tracks_parameters() -> None:
    a = Qwen2VLImageProcessor(QWEN2_VL).fingerprint
    assert a == Qwen2VLImageProcessor(dict(QWEN2_VL)).fingerprint
    assert a != Qwen2VLImageProcessor({**QWEN2_VL, "max_pixels": 3136 * 4}).fingerprint
    assert (
        ClipImageProcessor(LLAVA_15).fingerprint
        != ClipImageProcessor({**LLAVA_15, "resample": 2}).fingerprint
    )
