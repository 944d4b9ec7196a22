"""Deterministic tiny vision-language models in HF format: tiny-llava and tiny-qwen2-vl.

Each folder is what the real model's folder holds, at toy size: config.json and random
safetensors weights built with transformers' own classes, generation_config.json, a trained
byte-level BPE tokenizer with the model's image token(s), preprocessor_config.json written by
transformers' own image processor, and a chat template (chat_template.jinja and
tokenizer_config.json) that places image tokens as the real model's does. transformers'
AutoModelForImageTextToText, AutoTokenizer and AutoImageProcessor load both; AutoProcessor
loads tiny-llava (processor_config.json), while for tiny-qwen2-vl it also wants a video
processor, which needs torchvision. So the engine can be compared with transformers on the
same weights and the same pixel values.

- tiny-llava: LlavaForConditionalGeneration = CLIP vision tower (3 layers, 56-pixel images,
  14-pixel patches: 16 image tokens, feature layer -2, "default" strategy) + 2-layer GELU MLP
  projector + tiny Llama (hidden 64, GQA 4/2). Chat format "USER: <image>\\n... ASSISTANT:".
- tiny-qwen2-vl: Qwen2VLForConditionalGeneration = Qwen2-VL vision transformer (2 blocks,
  14-pixel patches, temporal patch 2, 2x2 merge) + tiny Qwen2 text model with M-RoPE
  (mrope_section [2, 3, 3]). Images resize to 4-64 merged tokens (min_pixels 28*28*4,
  max_pixels 28*28*64). ChatML with <|vision_start|><|image_pad|><|vision_end|>.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from mono_llm.core.testing import chat_templates
from mono_llm.core.testing.causal_lm import BASE_SHAPE, VOCAB_SIZE
from mono_llm.core.testing.tokenizer_builder import train_byte_level_bpe

VISION_FIXTURES = ("tiny-llava", "tiny-qwen2-vl")

LLAVA_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
QWEN2_VL_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# CLIP's normalisation constants, which both real models use.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

LLAVA_IMAGE_SIZE = 56
LLAVA_PATCH_SIZE = 14
QWEN2_VL_MIN_PIXELS = 28 * 28 * 4
QWEN2_VL_MAX_PIXELS = 28 * 28 * 64


def build_vision_fixture(name: str, out_dir: Path, *, seed: int = 0) -> None:
    """Write the fixture `name` (one of VISION_FIXTURES) into the empty folder `out_dir`."""
    builders = {"tiny-llava": _build_llava, "tiny-qwen2-vl": _build_qwen2_vl}
    builders[name](out_dir, seed)


def _text_shape() -> dict[str, Any]:
    return {key: value for key, value in BASE_SHAPE.items() if key != "tie_word_embeddings"}


def _build_llava(out_dir: Path, seed: int) -> None:
    import transformers

    vocab = train_byte_level_bpe(
        out_dir,
        special_tokens=LLAVA_SPECIALS,
        vocab_size=VOCAB_SIZE,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        chat_template=chat_templates.LLAVA,
        add_bos=True,
        extra_config={"unk_token": "<unk>"},
    )
    ids = {token: i for i, token in enumerate(LLAVA_SPECIALS)}
    num_image_tokens = (LLAVA_IMAGE_SIZE // LLAVA_PATCH_SIZE) ** 2
    text_config = transformers.LlamaConfig(
        vocab_size=vocab,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
        pad_token_id=ids["<pad>"],
        **_text_shape(),
    )
    vision_config = transformers.CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        image_size=LLAVA_IMAGE_SIZE,
        patch_size=LLAVA_PATCH_SIZE,
        projection_dim=32,
        hidden_act="quick_gelu",
        initializer_range=0.2,
    )
    config = transformers.LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=ids["<image>"],
        image_seq_length=num_image_tokens,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        tie_word_embeddings=False,
    )
    config.architectures = ["LlavaForConditionalGeneration"]
    _save_model(transformers.LlavaForConditionalGeneration, config, out_dir, seed)
    _write_generation_config(out_dir, ids["<s>"], [ids["</s>"]])

    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": LLAVA_IMAGE_SIZE},
        crop_size={"height": LLAVA_IMAGE_SIZE, "width": LLAVA_IMAGE_SIZE},
        resample=3,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    processor = transformers.LlavaProcessor(
        image_processor=image_processor,
        tokenizer=transformers.AutoTokenizer.from_pretrained(out_dir),
        patch_size=LLAVA_PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS feature, which "default" drops again
        chat_template=chat_templates.LLAVA,
        image_token="<image>",
    )
    _save_processor_files(processor, out_dir)
    image_processor.save_pretrained(out_dir)  # preprocessor_config.json, as real folders have
    _finish_config(out_dir)


def _build_qwen2_vl(out_dir: Path, seed: int) -> None:
    import transformers

    vocab = train_byte_level_bpe(
        out_dir,
        special_tokens=QWEN2_VL_SPECIALS,
        vocab_size=VOCAB_SIZE,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=chat_templates.QWEN2_VL,
        add_bos=False,
    )
    ids = {token: i for i, token in enumerate(QWEN2_VL_SPECIALS)}
    text = _text_shape()
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    # M-RoPE splits each head's rotary frequencies into (temporal, height, width) sections
    # summing to head_dim / 2, as Qwen2-VL's [16, 24, 24] does for head_dim 128.
    mrope_section = [2, 3, 3]
    assert sum(mrope_section) == head_dim // 2
    text_config = {
        "vocab_size": vocab,
        "bos_token_id": None,
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "use_sliding_window": False,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": mrope_section,
        },
        **text,
    }
    vision_config = {
        "depth": 2,
        "embed_dim": 32,
        "hidden_size": text["hidden_size"],  # the merger projects into the text width
        "num_heads": 2,
        "mlp_ratio": 2,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "in_channels": 3,
        "initializer_range": 0.2,
    }
    config = transformers.Qwen2VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    config.architectures = ["Qwen2VLForConditionalGeneration"]
    _save_model(transformers.Qwen2VLForConditionalGeneration, config, out_dir, seed)
    _write_generation_config(out_dir, None, [ids["<|im_end|>"], ids["<|endoftext|>"]])

    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=QWEN2_VL_MIN_PIXELS,
        max_pixels=QWEN2_VL_MAX_PIXELS,
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    # Only the image processor's file: transformers' Qwen2VLProcessor also wants its video
    # processor, which needs torchvision. Real Qwen2-VL folders likewise ship just
    # preprocessor_config.json, with the chat template beside the tokenizer.
    image_processor.save_pretrained(out_dir)
    (out_dir / "chat_template.jinja").write_text(chat_templates.QWEN2_VL)
    _finish_config(out_dir)


def _save_processor_files(processor: Any, out_dir: Path) -> None:
    """Keep processor_config.json and chat_template.jinja from a processor's save, but not the
    tokenizer files it rewrites (the trained tokenizer's own files stay, as the text
    fixtures have them)."""
    with tempfile.TemporaryDirectory() as scratch:
        processor.save_pretrained(scratch)
        for name in ("processor_config.json", "chat_template.jinja"):
            if (Path(scratch) / name).is_file():
                shutil.copyfile(Path(scratch) / name, out_dir / name)


def _save_model(model_class: Any, config: Any, out_dir: Path, seed: int) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        model = model_class(config).to(torch.float32)
        # Jitter norm weights off exactly 1 (as the text fixtures do) so a wrong norm, in the
        # vision tower as well as the decoder, cannot pass by accident.
        for module_name, param in model.named_parameters():
            if "norm" in module_name and param.dim() == 1:
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(out_dir, safe_serialization=True)


def _write_generation_config(out_dir: Path, bos_id: int | None, eos_ids: list[int]) -> None:
    generation = {
        "bos_token_id": bos_id,
        "eos_token_id": eos_ids if len(eos_ids) > 1 else eos_ids[0],
        "do_sample": False,
    }
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2))


def _finish_config(out_dir: Path) -> None:
    config_path = out_dir / "config.json"
    saved = json.loads(config_path.read_text())
    saved.setdefault("torch_dtype", "float32")
    config_path.write_text(json.dumps(saved, indent=2))
