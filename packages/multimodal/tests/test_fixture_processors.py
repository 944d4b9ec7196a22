"""The processors built from the tiny vision fixtures' folders equal transformers' processors
loaded from the same folders, token counts included (when mono-llm-core is installed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from multimodal_helpers import make_image

from mono_llm.multimodal import (
    ClipImageProcessor,
    Qwen2VLImageProcessor,
    expand_image_placeholders,
    load_image_processor,
)

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


def test_placeholder_expansion_matches_llava_processor() -> None:
    path = testing.fixture_path("tiny-llava")
    processor = transformers.AutoProcessor.from_pretrained(path)
    ours = load_image_processor(path)
    images = [make_image(70, 50, seed=1), make_image(40, 90, seed=2)]
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "text", "text": "and"},
                {"type": "image"},
                {"type": "text", "text": "compare"},
            ],
        }
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    expected = processor(images=images, text=prompt, return_tensors="np")["input_ids"][0].tolist()
    ids = processor.tokenizer(prompt).input_ids
    expanded, ranges = expand_image_placeholders(
        ids, processor.image_token_id, [ours(image).num_tokens for image in images]
    )
    assert expanded == expected
    assert [r.length for r in ranges] == [16, 16]


def test_placeholder_expansion_matches_qwen2_vl_token_rule() -> None:
    path = testing.fixture_path("tiny-qwen2-vl")
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    ours = load_image_processor(path)
    image_token_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    images = [make_image(100, 60, seed=3), make_image(300, 200, seed=4)]
    prompt = tokenizer.apply_chat_template(
        [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "hi"}],
            }
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    hf = transformers.AutoImageProcessor.from_pretrained(path)(images=images, return_tensors="np")
    counts = [int(grid.prod()) // 4 for grid in hf["image_grid_thw"]]
    pieces = prompt.split("<|image_pad|>")
    text = pieces[0] + "".join("<|image_pad|>" * n + rest for n, rest in zip(counts, pieces[1:]))
    expected = tokenizer(text).input_ids
    processed = [ours(image) for image in images]
    expanded, ranges = expand_image_placeholders(
        tokenizer(prompt).input_ids, image_token_id, [p.num_tokens for p in processed]
    )
    assert expanded == expected
    assert [r.length for r in ranges] == counts
    # Each range sits between the image's vision_start and vision_end tokens.
    start = tokenizer.convert_tokens_to_ids("<|vision_start|>")
    end = tokenizer.convert_tokens_to_ids("<|vision_end|>")
    for r in ranges:
        assert expanded[r.offset - 1] == start and expanded[r.offset + r.length] == end
