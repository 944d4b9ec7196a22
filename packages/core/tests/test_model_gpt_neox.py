"""GPT-NeoX against HF transformers on the same weights (float32, CPU): the config switches
Pythia and GPT-NeoX-20B use, both config spellings of the rotary settings, both names of the
LM head, the published sizes' tensors, and what the model refuses. tiny-gpt-neox also runs in
test_model_parity.py, test_engine_parity.py and test_model_inputs_embeds.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from mono_llm.core.errors import UnsupportedModelError
from mono_llm.core.testing import fixture_path
from mono_llm.core.testing.gpt_neox import build_gpt_neox
from mono_llm.core.testing.parity import (
    assert_runner_matches_hf,
    chunked_runner_logits,
    random_prompt,
)
from mono_llm.core.testing.variants import derive_model

MODEL = "tiny-gpt-neox"

# GPTNeoXConfig fields of each variant.
VARIANTS: dict[str, dict[str, Any]] = {
    "sequential-residual": {"use_parallel_residual": False},
    "full-rotary": {"rotary_pct": 1.0},
    # As GPT-NeoX-20B: gelu_fast; and a rope base other than 10000, no attention biases.
    "gelu-fast-base-no-bias": {
        "hidden_act": "gelu_fast",
        "rotary_emb_base": 500,
        "attention_bias": False,
    },
    "tied-head": {"tie_word_embeddings": True},
}


def _prompt(length: int = 90) -> list[int]:
    return random_prompt(length, 1200, first=2)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_config_variant_matches_hf(variant: str, tmp_path: Path) -> None:
    build_gpt_neox(MODEL, tmp_path, **VARIANTS[variant])
    assert_runner_matches_hf(tmp_path, _prompt())


def test_released_rotary_spelling_gives_the_same_model(tmp_path: Path) -> None:
    """Pythia's config.json says `rotary_pct` and `rotary_emb_base` at the top level, where
    transformers 5 writes `rope_parameters`; both build the same model."""
    saved = tmp_path / "saved"
    build_gpt_neox(MODEL, saved, rotary_pct=0.5, rotary_emb_base=1000)
    folder = shutil.copytree(saved, tmp_path / "released")
    config = json.loads((folder / "config.json").read_text())
    params = config.pop("rope_parameters")
    assert params["partial_rotary_factor"] == 0.5 and params["rope_theta"] == 1000
    config.update(rotary_pct=0.5, rotary_emb_base=1000)
    (folder / "config.json").write_text(json.dumps(config))
    assert_runner_matches_hf(folder, _prompt(40), reference=saved)


def test_released_checkpoint_names_and_buffers_load(tmp_path: Path) -> None:
    """Names as transformers 5 saves the head (`lm_head`), and the mask / rope buffers older
    checkpoints store beside the weights, load the same model."""

    def renamed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {k.replace("embed_out.", "lm_head."): v for k, v in state.items()}
        for layer in range(2):
            prefix = f"gpt_neox.layers.{layer}.attention."
            out[prefix + "bias"] = torch.ones(1, 1, 1024, 1024, dtype=torch.bool).tril()
            out[prefix + "masked_bias"] = torch.tensor(-1e9)
            out[prefix + "rotary_emb.inv_freq"] = torch.ones(2)
        return out

    folder = derive_model(MODEL, tmp_path / "old", weights=renamed, weight_format="bin")
    assert_runner_matches_hf(folder, _prompt(40), reference=fixture_path(MODEL))


def test_unknown_activation_is_refused(tmp_path: Path) -> None:
    folder = derive_model(MODEL, tmp_path / "act", config=lambda c: c.update(hidden_act="mish"))
    with pytest.raises(UnsupportedModelError, match="hidden_act='mish'"):
        chunked_runner_logits(folder, [2, 5, 6])


def test_fused_qkv_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    def cut(state: dict[str, torch.Tensor]) -> None:
        key = "gpt_neox.layers.1.attention.query_key_value.weight"
        state[key] = state[key][:-4].clone()

    folder = derive_model(MODEL, tmp_path / "cut", weights=cut)
    with pytest.raises(UnsupportedModelError, match=r"layers\.1\.attention\.query_key_value"):
        chunked_runner_logits(folder, [2, 5, 6])


# The shape fields of the published config.json files.
PUBLISHED_SHAPES: dict[str, dict[str, Any]] = {
    "pythia-70m": {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 6,
                   "num_attention_heads": 8, "vocab_size": 50304},
    "pythia-1.4b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
                    "num_attention_heads": 16, "vocab_size": 50304},
    "gpt-neox-20b": {"hidden_size": 6144, "intermediate_size": 24576, "num_hidden_layers": 44,
                     "num_attention_heads": 64, "vocab_size": 50432, "hidden_act": "gelu_fast"},
}  # fmt: skip


@pytest.mark.parametrize("shape", sorted(PUBLISHED_SHAPES))
def test_published_shapes_load_every_hf_tensor_exactly(shape: str) -> None:
    """On the meta device (shapes only): transformers' GPTNeoXForCausalLM state dict of each
    published size fills every parameter of ours once, with matching shapes."""
    import transformers

    from mono_llm.core.models.gpt_neox import GPTNeoXForCausalLM
    from mono_llm.core.models.loader import mapped_weights
    from mono_llm.core.models.registry import resolve_spec

    config = transformers.GPTNeoXConfig(rotary_pct=0.25, **PUBLISHED_SHAPES[shape])
    with torch.device("meta"):
        hf = transformers.GPTNeoXForCausalLM(config)
        ours = GPTNeoXForCausalLM.from_hf_config(config.to_dict(), "GPTNeoXForCausalLM", 2048)
    assert ours.settings.rotary_dim == ours.settings.head_dim // 4
    spec = resolve_spec(["GPTNeoXForCausalLM"])
    loaded = ours.load_weights(mapped_weights(iter(hf.state_dict().items()), spec.weights))
    assert loaded == ours.expected_weights()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())
