"""Config switches of the Llama family against HF transformers: rope scaling variants,
attention / MLP bias, tied embeddings, explicit head_dim, legacy configs, Gemma's switches (Gemma, Gemma 2, Gemma 3)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from mono_llm.core.config import EngineArgs
from mono_llm.core.worker.batch import LogitsWanted, ModelBatch, SequenceSlice
from mono_llm.core.worker.model_runner import ModelRunner

SHAPE: dict[str, Any] = {
    "vocab_size": 300,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5,
    "initializer_range": 0.2,
}

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama-rope-linear": (
        "LlamaForCausalLM",
        {"rope_theta": 10000.0, "rope_scaling": {"rope_type": "linear", "factor": 4.0}},
    ),
    "llama-rope-yarn": (
        "LlamaForCausalLM",
        {
            "rope_theta": 10000.0,
            "rope_scaling": {
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 128,
            },
        },
    ),
    "llama-bias-tied-headdim": (
        "LlamaForCausalLM",
        {"attention_bias": True, "mlp_bias": True, "tie_word_embeddings": True, "head_dim": 32},
    ),
    "mistral-no-gqa": ("MistralForCausalLM", {"num_key_value_heads": 4, "sliding_window": None}),
    "qwen2-tied": ("Qwen2ForCausalLM", {"tie_word_embeddings": True}),
    "qwen3-bias": ("Qwen3ForCausalLM", {"attention_bias": True, "head_dim": 8}),
    # Released Gemma configs wrote "gelu" for the tanh approximation; gemma-2b has one kv head.
    "gemma-legacy-gelu-mqa": (
        "GemmaForCausalLM",
        {"hidden_act": "gelu", "head_dim": 16, "num_key_value_heads": 1},
    ),
    "gemma-untied-headdim": ("GemmaForCausalLM", {"tie_word_embeddings": False, "head_dim": 32}),
    "gemma2-no-caps": (
        "Gemma2ForCausalLM",
        {
            "head_dim": 16,
            "query_pre_attn_scalar": 16,
            "attn_logit_softcapping": None,
            "final_logit_softcapping": None,
            "sliding_window": 512,
        },
    ),
    # The window on the second layer only (spelled out), 8 tokens, over a 200-token prompt.
    "gemma2-layer-types": (
        "Gemma2ForCausalLM",
        {
            "head_dim": 32,
            "sliding_window": 8,
            "layer_types": ["full_attention", "sliding_attention"],
            "attn_logit_softcapping": 3.0,
        },
    ),
    # gemma-3-1b's layout: six layers at the released 5 sliding : 1 full pattern (derived by
    # transformers, no layer_types given), one kv head, unscaled rope on both kinds of layer,
    # an 8-token window over the 200-token prompt.
    "gemma3-pattern-mqa": (
        "Gemma3ForCausalLM",
        {
            "num_hidden_layers": 6,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "query_pre_attn_scalar": 16,
            "sliding_window": 8,
            "rope_theta": 1000000.0,
            "rope_local_base_freq": 10000.0,
        },
    ),
}


def build(tmp_path: Path, architecture: str, overrides: dict[str, Any]) -> tuple[Path, Any]:
    import transformers

    config_cls = {
        "LlamaForCausalLM": transformers.LlamaConfig,
        "MistralForCausalLM": transformers.MistralConfig,
        "Qwen2ForCausalLM": transformers.Qwen2Config,
        "Qwen3ForCausalLM": transformers.Qwen3Config,
        "GemmaForCausalLM": transformers.GemmaConfig,
        "Gemma2ForCausalLM": transformers.Gemma2Config,
        "Gemma3ForCausalLM": transformers.Gemma3TextConfig,
    }[architecture]
    config = config_cls(**{**SHAPE, **overrides})
    config.architectures = [architecture]
    torch.manual_seed(0)
    model = getattr(transformers, architecture)(config).float().eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(tmp_path)
    return tmp_path, model


def logits(folder: Path, prompt: list[int]) -> torch.Tensor:
    args = EngineArgs(
        model=str(folder), device="cpu", max_num_seqs=2, max_model_len=512,
        kv_cache_memory_gib=0.01,
    )  # fmt: skip
    runner = ModelRunner(args.create_engine_config())
    table = list(range(-(-len(prompt) // runner.block_size)))
    half = len(prompt) // 2  # two chunks: the second attends over a cached prefix
    first = runner.execute(ModelBatch([SequenceSlice(prompt[:half], 0, table, LogitsWanted.ALL)]))
    second = runner.execute(
        ModelBatch([SequenceSlice(prompt[half:], half, table, LogitsWanted.ALL)])
    )
    return torch.cat([first, second])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_matches_hf(variant: str, tmp_path: Path) -> None:
    architecture, overrides = VARIANTS[variant]
    folder, hf = build(tmp_path, architecture, overrides)
    # Long enough to cross yarn's original 128 positions.
    prompt = torch.randint(
        0, SHAPE["vocab_size"], (200,), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        expected = hf(prompt[None]).logits[0]
    torch.testing.assert_close(logits(folder, prompt.tolist()), expected, atol=2e-4, rtol=1e-4)


def test_legacy_yarn_config_matches(tmp_path: Path) -> None:
    """The same yarn model with the released-checkpoint config keys (rope_scaling, rope_theta,
    "type") gives the same logits as the transformers-5 `rope_parameters` form."""
    folder, _ = build(tmp_path / "new", *VARIANTS["llama-rope-yarn"])
    config = json.loads((folder / "config.json").read_text())
    params = config.pop("rope_parameters", None)
    assert params is not None, "transformers 5 writes rope_parameters"
    config["rope_theta"] = params.pop("rope_theta")
    config["rope_scaling"] = {**params, "type": params.pop("rope_type")}
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text(json.dumps(config))
    (legacy / "model.safetensors").symlink_to(folder / "model.safetensors")
    prompt = list(range(3, 203))
    torch.testing.assert_close(logits(legacy, prompt), logits(folder, prompt), atol=0, rtol=0)


def test_gemma_embedding_scale_is_rounded_to_the_model_dtype(tmp_path: Path) -> None:
    """sqrt(48) is 6.93 in float32 but 6.94 in bfloat16; the reference multiplies by the
    rounded factor, so bfloat16 embeddings must equal its embeddings bit for bit."""
    import transformers

    folder, _ = build(tmp_path, "GemmaForCausalLM", {"hidden_size": 48, "head_dim": 16})
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    args = EngineArgs(
        model=str(folder), device="cpu", dtype="bfloat16", max_num_seqs=2, max_model_len=64,
        kv_cache_memory_gib=0.01,
    )  # fmt: skip
    runner = ModelRunner(args.create_engine_config())
    ids = torch.arange(0, SHAPE["vocab_size"])
    with torch.no_grad():
        expected = hf.get_input_embeddings()(ids[None])[0]
        ours = runner.model.embed_input_ids(ids)
    assert ours.dtype == torch.bfloat16
    assert torch.equal(ours, expected)
    unrounded = (runner.model.model.embed_tokens(ids).float() * 48**0.5).to(torch.bfloat16)
    assert not torch.equal(unrounded, expected)  # the rounding is what makes them equal
