"""GPT-2 against HF transformers on the same weights (float32, CPU): the config switches
GPT-2 checkpoints use, old and new checkpoint namings, the published sizes' tensors, the
tokenizer, and what the model refuses. tiny-gpt2 also runs in test_model_parity.py,
test_engine_parity.py and test_model_inputs_embeds.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from mono_llm.core import LLM, EngineArgs, SamplingParams
from mono_llm.core.errors import UnsupportedModelError
from mono_llm.core.testing import fixture_path
from mono_llm.core.testing.gpt2 import GPT2_EOS_ID, build_gpt2
from mono_llm.core.testing.parity import (
    assert_runner_matches_hf,
    chunked_runner_logits,
    random_prompt,
)
from mono_llm.core.testing.variants import derive_model

MODEL = "tiny-gpt2"

# GPT2Config fields of each variant.
VARIANTS: dict[str, dict[str, Any]] = {
    # As the Stanford CRFM GPT-2 models: layer i's scores divided by i + 1, float32 softmax.
    "inverse-layer-scaled-upcast": {
        "scale_attn_by_inverse_layer_idx": True,
        "reorder_and_upcast_attn": True,
    },
    "unscaled-attention": {"scale_attn_weights": False, "initializer_range": 0.05},
    "exact-gelu-narrow-mlp-eps": {
        "activation_function": "gelu",
        "n_inner": 96,
        "layer_norm_epsilon": 1e-3,
    },
    "relu-three-layers": {"activation_function": "relu", "n_layer": 3},
}


def _prompt(length: int = 90) -> list[int]:
    return random_prompt(length, 1200, first=1)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_config_variant_matches_hf(variant: str, tmp_path: Path) -> None:
    build_gpt2(MODEL, tmp_path, **VARIANTS[variant])
    assert_runner_matches_hf(tmp_path, _prompt())


def _old_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original openai-community/gpt2 pytorch_model.bin: the body without
    `transformer.`, and each layer's causal-mask buffers stored beside its weights."""
    old = {k.removeprefix("transformer."): v for k, v in state.items()}
    for layer in range(2):
        old[f"h.{layer}.attn.bias"] = torch.tril(torch.ones(1, 1, 1024, 1024, dtype=torch.uint8))
        old[f"h.{layer}.attn.masked_bias"] = torch.tensor(-1e4)
    return old


def test_old_bare_checkpoint_with_mask_buffers_loads(tmp_path: Path) -> None:
    folder = derive_model(MODEL, tmp_path / "old", weights=_old_checkpoint, weight_format="bin")
    assert not list(folder.glob("*.safetensors"))
    assert_runner_matches_hf(folder, _prompt(40), reference=fixture_path(MODEL))


def test_checkpoint_with_an_lm_head_copy_loads_tied(tmp_path: Path) -> None:
    def with_head(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {**state, "lm_head.weight": state["transformer.wte.weight"].clone()}

    folder = derive_model(MODEL, tmp_path / "head", weights=with_head)
    assert_runner_matches_hf(folder, _prompt(20), reference=fixture_path(MODEL))


def test_config_with_model_type_only_loads(tmp_path: Path) -> None:
    """Converters that write `model_type: gpt2` and no `architectures` get GPT2LMHeadModel."""
    folder = derive_model(MODEL, tmp_path / "typed", config=lambda c: c.pop("architectures"))
    assert_runner_matches_hf(folder, _prompt(20), reference=fixture_path(MODEL))


def test_text_prompts_match_hf_generate() -> None:
    """LLM.generate on text: GPT-2's tokenizer prepends nothing, and the greedy tokens are
    transformers' generate ones."""
    import transformers

    prompts = ["Hello, my name is", "The capital of France is", "The future of AI is"]
    llm = LLM(model=str(fixture_path(MODEL)), seed=0, max_model_len=256)
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    outputs = llm.generate(prompts, params)
    tokenizer = transformers.AutoTokenizer.from_pretrained(fixture_path(MODEL))
    model = transformers.AutoModelForCausalLM.from_pretrained(
        fixture_path(MODEL), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    model.generation_config = transformers.GenerationConfig(
        do_sample=False, max_new_tokens=24, pad_token_id=GPT2_EOS_ID
    )
    for prompt, out in zip(prompts, outputs, strict=True):
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        assert out.prompt_token_ids == ids[0].tolist()
        assert GPT2_EOS_ID not in out.prompt_token_ids
        with torch.no_grad():
            expected = model.generate(ids)[0, ids.shape[1] :].tolist()
        assert out.outputs[0].token_ids == expected
        assert out.outputs[0].text == tokenizer.decode(expected)


def test_context_longer_than_n_positions_is_refused() -> None:
    from mono_llm.core.models.gpt2 import GPT2LMHeadModel

    folder = fixture_path(MODEL)
    with pytest.raises(ValueError, match="max_model_len"):
        EngineArgs(model=str(folder), max_model_len=2048).create_engine_config()
    config = EngineArgs(model=str(folder)).create_engine_config().model_config
    assert config.max_model_len == 1024  # n_positions is the context window
    with torch.device("meta"), pytest.raises(UnsupportedModelError, match="n_positions=1024"):
        GPT2LMHeadModel.from_hf_config(config.hf_config, "GPT2LMHeadModel", max_model_len=1025)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"add_cross_attention": True}, "add_cross_attention"),
        ({"activation_function": "mish"}, "mish"),
        ({"n_head": 5}, "not divisible"),
    ],
)
def test_unsupported_configs_are_refused(
    change: dict[str, Any], message: str, tmp_path: Path
) -> None:
    folder = derive_model(MODEL, tmp_path / "bad", config=lambda c: c.update(change))
    with pytest.raises(UnsupportedModelError, match=message):
        chunked_runner_logits(folder, [1, 5, 6])


def test_fused_qkv_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    def cut(state: dict[str, torch.Tensor]) -> None:
        key = "transformer.h.1.attn.c_attn.weight"
        state[key] = state[key][:, :-4].clone()

    folder = derive_model(MODEL, tmp_path / "cut", weights=cut)
    with pytest.raises(UnsupportedModelError, match=r"layers\.1\.self_attn\.c_attn\.weight .* 192"):
        chunked_runner_logits(folder, [1, 5, 6])


def test_missing_layer_weight_is_named(tmp_path: Path) -> None:
    def drop(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v for k, v in state.items() if k != "transformer.h.1.mlp.c_proj.weight"}

    folder = derive_model(MODEL, tmp_path / "partial", weights=drop)
    # Named as the engine's module tree (OPT's) calls it: layer 1's second MLP linear.
    with pytest.raises(UnsupportedModelError, match=r"layers\.1\.fc2\.weight"):
        chunked_runner_logits(folder, [1, 5, 6])


# The shape fields of the published config.json files (the rest are GPT2Config defaults).
PUBLISHED_SHAPES: dict[str, dict[str, int]] = {
    "gpt2": {"n_embd": 768, "n_layer": 12, "n_head": 12},
    "distilgpt2": {"n_embd": 768, "n_layer": 6, "n_head": 12},
    "gpt2-medium": {"n_embd": 1024, "n_layer": 24, "n_head": 16},
    "gpt2-large": {"n_embd": 1280, "n_layer": 36, "n_head": 20},
    "gpt2-xl": {"n_embd": 1600, "n_layer": 48, "n_head": 25},
}


@pytest.mark.parametrize("shape", sorted(PUBLISHED_SHAPES))
@pytest.mark.parametrize("naming", ["transformer", "bare-with-buffers"])
def test_published_shapes_load_every_hf_tensor_exactly(shape: str, naming: str) -> None:
    """On the meta device (shapes only): transformers' GPT2LMHeadModel state dict of each
    published size, named as its safetensors or as the original pytorch_model.bin (bare
    body, mask buffers), fills every parameter of ours once, with matching shapes."""
    import transformers

    from mono_llm.core.models.gpt2 import GPT2LMHeadModel
    from mono_llm.core.models.loader import mapped_weights
    from mono_llm.core.models.registry import resolve_spec

    config = transformers.GPT2Config(vocab_size=50257, **PUBLISHED_SHAPES[shape])
    with torch.device("meta"):
        hf = transformers.GPT2LMHeadModel(config)
        ours = GPT2LMHeadModel.from_hf_config(config.to_dict(), "GPT2LMHeadModel", 1024)
    state = {k: v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    if naming != "transformer":
        state = {k.removeprefix("transformer."): v for k, v in state.items()}
        state |= {f"h.{i}.attn.{b}": torch.empty(0) for i in range(config.n_layer)
                  for b in ("bias", "masked_bias")}  # fmt: skip
    spec = resolve_spec(["GPT2LMHeadModel"])
    loaded = ours.load_weights(mapped_weights(iter(state.items()), spec.weights))
    assert loaded == ours.expected_weights()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())
