"""LLaVA-1.5 and Qwen2-VL against transformers on the tiny fixtures: the same images and
prompt give the same greedy tokens, with chunked prefill cutting through image spans, with a
prefix-cache hit, and with two images in one prompt; different images behind the same text
never share KV blocks. Pixel values come from transformers' own processors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mono_llm.core import LLM, SamplingParams
from mono_llm.core.errors import InvalidRequestError
from mono_llm.core.multimodal import MultiModalItem
from mono_llm.core.testing import fixture_path

transformers = pytest.importorskip("transformers")
Image = pytest.importorskip("PIL.Image")

MAX_TOKENS = 10
GREEDY = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)


def picture(seed: int, size: tuple[int, int]) -> object:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


# ------------------------------------------------------------------------------ LLaVA


@pytest.fixture(scope="module")
def llava() -> tuple[object, object, object]:
    path = fixture_path("tiny-llava")
    processor = transformers.AutoProcessor.from_pretrained(path)
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    # A 16-token step budget cuts the 16-token image span (prompt positions 6..21) in two.
    llm = LLM(str(path), max_num_batched_tokens=16, block_size=4, max_num_seqs=4)
    return processor, hf.eval(), llm


def llava_case(processor: object, seed: int, text: str) -> tuple[dict, list[int], torch.Tensor]:
    encoded = processor(images=picture(seed, (70 + seed, 50)), text=text, return_tensors="pt")
    ids = encoded["input_ids"][0].tolist()
    item = MultiModalItem("image", {"pixel_values": encoded["pixel_values"][0]}, 16)
    return {"prompt_token_ids": ids, "multi_modal_data": {"image": item}}, ids, encoded


def hf_greedy(hf: object, **inputs: torch.Tensor) -> list[int]:
    with torch.no_grad():
        out = hf.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def test_llava_greedy_equals_transformers_with_chunks_and_prefix_hits(llava) -> None:
    processor, hf, llm = llava
    text = "USER: <image>\nWhat is shown here? ASSISTANT:"
    prompts, expected = [], []
    for seed in (0, 1):  # two images, same text
        prompt, ids, encoded = llava_case(processor, seed, text)
        assert ids.count(hf.config.image_token_id) == 16 and ids.index(4) == 6
        prompts.append(prompt)
        expected.append(hf_greedy(hf, **encoded))
    assert expected[0] != expected[1]  # the image matters
    first = llm.generate([prompts[0]], GREEDY)[0]
    assert first.outputs[0].token_ids == expected[0]
    # Same text, other image: only the block before the image span (tokens 0-3) is shared.
    other = llm.generate([prompts[1]], GREEDY)[0]
    assert other.outputs[0].token_ids == expected[1]
    assert other.num_cached_tokens == 4
    # The first image again: a prefix-cache hit through the image span, same tokens.
    again = llm.generate([prompts[0]], GREEDY)[0]
    assert again.outputs[0].token_ids == expected[0]
    assert again.num_cached_tokens >= 32


def test_llava_refuses_mismatched_placeholders(llava) -> None:
    processor, _, llm = llava
    prompt, ids, _ = llava_case(processor, 0, "USER: <image>\nHi ASSISTANT:")
    item = prompt["multi_modal_data"]["image"]
    with pytest.raises(InvalidRequestError, match="placeholder"):
        llm.generate([{"prompt_token_ids": ids, "multi_modal_data": {"image": [item, item]}}])
    with pytest.raises(InvalidRequestError, match="limit-mm-per-prompt"):
        too_many = [item] * 9  # default limit: 8 images
        llm.generate([{"prompt_token_ids": [4] * 9, "multi_modal_data": {"image": too_many}}])


# --------------------------------------------------------------------------- Qwen2-VL


@pytest.fixture(scope="module")
def qwen2_vl() -> tuple[object, object, object, object]:
    path = fixture_path("tiny-qwen2-vl")
    image_processor = transformers.AutoImageProcessor.from_pretrained(path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    hf = transformers.Qwen2VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    llm = LLM(str(path), max_num_batched_tokens=16, block_size=4, max_num_seqs=4)
    return image_processor, tokenizer, hf.eval(), llm


def test_qwen2_vl_greedy_equals_transformers_with_two_images(qwen2_vl) -> None:
    image_processor, tokenizer, hf, llm = qwen2_vl
    pad = hf.config.image_token_id
    text = (
        "<|im_start|>user\nCompare <|vision_start|><|image_pad|><|vision_end|>with"
        "<|vision_start|><|image_pad|><|vision_end|> please.<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tokenizer(text)["input_ids"]
    images = [picture(0, (90, 70)), picture(1, (60, 120))]  # different sizes and aspect ratios
    processed = image_processor(images=images, return_tensors="pt")
    grid = processed["image_grid_thw"]
    sizes = (grid.prod(-1) // 4).tolist()
    expanded: list[int] = []
    for token in ids:
        expanded += [token] * sizes.pop(0) if token == pad else [token]
    input_ids = torch.tensor([expanded])
    expected = hf_greedy(
        hf,
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        pixel_values=processed["pixel_values"],
        image_grid_thw=grid,
        mm_token_type_ids=(input_ids == pad).int(),
    )
    patches = processed["pixel_values"].split(grid.prod(-1).tolist())
    items = [
        MultiModalItem(
            "image",
            {"pixel_values": patches[i], "image_grid_thw": grid[i]},
            int(grid[i].prod()) // 4,
        )
        for i in range(2)
    ]
    prompt = {"prompt_token_ids": ids, "multi_modal_data": {"image": items}}
    out = llm.generate([prompt], GREEDY)[0]  # 16-token steps cut through both spans
    assert out.outputs[0].token_ids == expected
    assert len(out.prompt_token_ids) == len(expanded)
    again = llm.generate([prompt], GREEDY)[0]  # prefix-cache hit, positions shifted by delta
    assert again.num_cached_tokens > 0 and again.outputs[0].token_ids == expected
    encoder_cache = llm.llm_engine.model_runner.mm_embedder.cache
    assert len(encoder_cache._holders) == 0  # nothing held once the requests finished


def test_qwen2_vl_text_only_prompt_equals_transformers(qwen2_vl) -> None:
    _, tokenizer, hf, llm = qwen2_vl
    ids = tokenizer("<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    input_ids = torch.tensor([ids])
    expected = hf_greedy(hf, input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    out = llm.generate([{"prompt_token_ids": ids}], GREEDY)[0]
    assert out.outputs[0].token_ids == expected


# ------------------------------------------------------------------------- Qwen2.5-VL


@pytest.fixture(scope="module")
def qwen2_5_vl_dir(tmp_path_factory: pytest.TempPathFactory) -> object:
    """tiny-qwen2-vl's tokenizer and image processor with a Qwen2.5-VL model built by
    transformers: RMSNorm + SwiGLU vision blocks, windows of 2x2 merge groups (56 px) and
    full attention in the last block only."""
    import json
    import shutil

    source = fixture_path("tiny-qwen2-vl")
    out = tmp_path_factory.mktemp("tiny-qwen2.5-vl")
    for name in source.iterdir():
        if name.name not in ("config.json", "model.safetensors"):
            shutil.copy(name, out / name.name)
    old = json.loads((source / "config.json").read_text())
    vision = {
        "depth": 2, "hidden_size": 32, "intermediate_size": 48, "out_hidden_size": 64,
        "num_heads": 2, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
        "window_size": 56, "fullatt_block_indexes": [1], "hidden_act": "silu",
        "initializer_range": 0.2,
    }  # fmt: skip
    config = transformers.Qwen2_5_VLConfig(
        text_config=old["text_config"],
        vision_config=vision,
        image_token_id=old["image_token_id"],
        video_token_id=old["video_token_id"],
        vision_start_token_id=old["vision_start_token_id"],
        vision_end_token_id=old["vision_end_token_id"],
        tie_word_embeddings=False,
    )
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    torch.manual_seed(0)
    model = transformers.Qwen2_5_VLForConditionalGeneration(config).float()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and param.dim() == 1:
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(out)
    return out


def test_qwen2_5_vl_greedy_equals_transformers_with_windowed_attention(qwen2_5_vl_dir) -> None:
    image_processor = transformers.AutoImageProcessor.from_pretrained(qwen2_5_vl_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(qwen2_5_vl_dir)
    hf = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
        qwen2_5_vl_dir, dtype=torch.float32
    ).eval()
    pad = hf.config.image_token_id
    text = (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is it?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = tokenizer(text)["input_ids"]
    processed = image_processor(images=[picture(3, (150, 100))], return_tensors="pt")
    grid = processed["image_grid_thw"]
    size = int(grid[0].prod()) // 4
    assert grid[0, 1] // 2 > 2 and grid[0, 2] // 2 > 2  # more than one 2x2 window
    expanded: list[int] = []
    for token in ids:
        expanded += [token] * size if token == pad else [token]
    input_ids = torch.tensor([expanded])
    expected = hf_greedy(
        hf,
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        pixel_values=processed["pixel_values"],
        image_grid_thw=grid,
        mm_token_type_ids=(input_ids == pad).int(),
    )
    item = MultiModalItem(
        "image", {"pixel_values": processed["pixel_values"], "image_grid_thw": grid[0]}, size
    )
    llm = LLM(str(qwen2_5_vl_dir), max_num_batched_tokens=32, block_size=4)
    out = llm.generate([{"prompt_token_ids": ids, "multi_modal_data": {"image": item}}], GREEDY)
    assert out[0].outputs[0].token_ids == expected


def test_images_the_model_cannot_take_are_refused_at_admission(llava, qwen2_vl) -> None:
    *_, llm = llava
    bad_size = MultiModalItem("image", {"pixel_values": torch.zeros(3, 28, 28)}, 16)
    with pytest.raises(InvalidRequestError, match=r"shape \(3, 56, 56\)"):
        llm.generate([{"prompt_token_ids": [1, 4, 2], "multi_modal_data": {"image": bad_size}}])
    wrong_count = MultiModalItem("image", {"pixel_values": torch.zeros(3, 56, 56)}, 9)
    with pytest.raises(InvalidRequestError, match="fills 16 tokens"):
        llm.generate([{"prompt_token_ids": [1, 4, 2], "multi_modal_data": {"image": wrong_count}}])
    *_, qwen = qwen2_vl
    grid = torch.tensor([1, 4, 4])
    mismatched = MultiModalItem(
        "image", {"pixel_values": torch.zeros(8, 1176), "image_grid_thw": grid}, 4
    )
    with pytest.raises(InvalidRequestError, match="do not match the grid"):
        qwen.generate([{"prompt_token_ids": [5], "multi_modal_data": {"image": mismatched}}])
    assert llm.generate(["USER: hi ASSISTANT:"], GREEDY)[0].outputs[0].token_ids  # still serving


def test_memory_profile_items_are_valid_images(llava, qwen2_vl) -> None:
    """What the CUDA runner encodes to size the KV cache passes the models' own checks."""
    for model in (
        llava[2].llm_engine.model_runner.model,
        qwen2_vl[3].llm_engine.model_runner.model,
    ):
        items = model.profile_items(64)
        for item in items:
            model.check_multimodal_item(item)
        outputs = model.embed_multimodal(items)
        assert sum(o.shape[0] for o in outputs) == sum(i.num_tokens for i in items) >= 16
