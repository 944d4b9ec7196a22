"""tiny-llava and tiny-qwen2-vl load in transformers and generate from an image and a prompt."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
import transformers

from mono_llm.core.testing import fixture_names, fixture_path
from mono_llm.core.testing.vision import build_vision_fixture

PIL = pytest.importorskip("PIL.Image")


def noise_image(width: int, height: int, seed: int) -> PIL.Image:
    rng = np.random.default_rng(seed)
    return PIL.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), mode="RGB")


def user_turn(text: str, images: int = 1) -> list[dict]:
    parts = [{"type": "image"} for _ in range(images)] + [{"type": "text", "text": text}]
    return [{"role": "user", "content": parts}]


def test_vision_fixtures_are_registered() -> None:
    assert {"tiny-llava", "tiny-qwen2-vl"} <= set(fixture_names())


def test_tiny_llava_loads_and_generates_from_an_image() -> None:
    path = fixture_path("tiny-llava")
    for name in (
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "processor_config.json",
        "tokenizer.json",
        "chat_template.jinja",
    ):
        assert (path / name).is_file(), name
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["LlavaForConditionalGeneration"]
    assert (
        config["vision_feature_layer"] == -2
        and config["vision_feature_select_strategy"] == "default"
    )

    processor = transformers.AutoProcessor.from_pretrained(path)
    assert isinstance(processor, transformers.LlavaProcessor)
    model = transformers.AutoModelForImageTextToText.from_pretrained(path).eval()
    assert isinstance(model, transformers.LlavaForConditionalGeneration)
    image_token_id = model.config.image_token_id
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == image_token_id

    prompt = processor.apply_chat_template(
        user_turn("What is in the picture?"), add_generation_prompt=True
    )
    assert prompt == "USER: <image>\nWhat is in the picture? ASSISTANT:"
    inputs = processor(images=noise_image(80, 60, 0), text=prompt, return_tensors="pt")
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 56, 56)
    assert int((inputs["input_ids"] == image_token_id).sum()) == 16  # (56 / 14)^2
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 6

    # The image matters: another image changes the next-token logits.
    other = processor(images=noise_image(80, 60, 1), text=prompt, return_tensors="pt")
    with torch.no_grad():
        a = model(**inputs).logits[0, -1]
        b = model(**other).logits[0, -1]
    assert not torch.allclose(a, b, atol=1e-4)
    top2 = a.topk(2).values  # wide init: no near-ties for greedy parity tests
    assert (top2[0] - top2[1]).item() > 1e-3


def qwen2_vl_inputs(path, tokenizer, image_processor, images, text):  # type: ignore[no-untyped-def]
    """What Qwen2VLProcessor does (its constructor needs torchvision for the video half):
    process the images, expand each <|image_pad|> to grid_t*grid_h*grid_w/4 copies, tokenize."""
    prompt = tokenizer.apply_chat_template(
        user_turn(text, len(images)), tokenize=False, add_generation_prompt=True
    )
    vision = image_processor(images=images, return_tensors="pt")
    pieces = prompt.split("<|image_pad|>")
    assert len(pieces) == len(images) + 1
    expanded = pieces[0]
    for grid, piece in zip(vision["image_grid_thw"], pieces[1:]):
        expanded += "<|image_pad|>" * int(grid.prod() // 4) + piece
    encoded = tokenizer(expanded, return_tensors="pt")
    image_token_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    # 1 marks image tokens (0 text), which transformers' M-RoPE needs to place them in 3-D.
    mm_token_type_ids = (encoded["input_ids"] == image_token_id).long()
    return {
        **encoded,
        "mm_token_type_ids": mm_token_type_ids,
        "pixel_values": vision["pixel_values"],
        "image_grid_thw": vision["image_grid_thw"],
    }


def test_tiny_qwen2_vl_loads_and_generates_from_images() -> None:
    path = fixture_path("tiny-qwen2-vl")
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["Qwen2VLForConditionalGeneration"]
    preprocessor = json.loads((path / "preprocessor_config.json").read_text())
    assert preprocessor["image_processor_type"].startswith("Qwen2VLImageProcessor")
    assert preprocessor["merge_size"] == 2 and preprocessor["patch_size"] == 14

    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    image_processor = transformers.AutoImageProcessor.from_pretrained(path)
    model = transformers.AutoModelForImageTextToText.from_pretrained(path).eval()
    assert isinstance(model, transformers.Qwen2VLForConditionalGeneration)
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == model.config.image_token_id

    prompt = tokenizer.apply_chat_template(
        user_turn("Describe it."), tokenize=False, add_generation_prompt=True
    )
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>Describe it.<|im_end|>\n<|im_start|>assistant\n"
    )
    images = [noise_image(100, 60, 2), noise_image(30, 90, 3)]  # two sizes: two grids
    inputs = qwen2_vl_inputs(path, tokenizer, image_processor, images, "Compare them.")
    grids = inputs["image_grid_thw"].tolist()
    assert grids[0] != grids[1]
    expected_pads = sum(t * h * w // 4 for t, h, w in grids)
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == expected_pads
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 6

    swapped = qwen2_vl_inputs(
        path, tokenizer, image_processor, [noise_image(100, 60, 4), images[1]], "Compare them."
    )
    with torch.no_grad():
        a = model(**inputs).logits[0, -1]
        b = model(**swapped).logits[0, -1]
    assert not torch.allclose(a, b, atol=1e-4)
    top2 = a.topk(2).values
    assert (top2[0] - top2[1]).item() > 1e-3


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2-vl"])
def test_vision_fixture_build_is_deterministic(name: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    build_vision_fixture(name, first)
    build_vision_fixture(name, second)
    for file in ("model.safetensors", "config.json", "tokenizer.json", "preprocessor_config.json"):
        digest = [
            hashlib.sha256((folder / file).read_bytes()).hexdigest() for folder in (first, second)
        ]
        assert digest[0] == digest[1], file
