"""Gemma 3 text at the published sizes, on the meta device (shapes only, no memory).

The tiny-gemma3 fixture checks the arithmetic against transformers; these check what only the
real sizes show: every tensor of transformers' Gemma3ForCausalLM state dict lands in one of our
parameters, the released 5 sliding : 1 full layer pattern, and that the released config.json
spelling (top-level rope_theta / rope_local_base_freq / rope_scaling, sliding_window_pattern)
gives the same settings as the one transformers 5 writes (rope_parameters, layer_types).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

# Shape fields of the published config.json files (gemma-3-270m and -1b are gemma3_text
# checkpoints; the 4b, 12b and 27b rows are the text_config of the multimodal releases, whose
# full layers scale rope linearly by 8).
PUBLISHED: dict[str, dict[str, Any]] = {
    "gemma-3-270m": {"hidden_size": 640, "intermediate_size": 2048, "num_hidden_layers": 18,
                     "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
                     "query_pre_attn_scalar": 256, "sliding_window": 512, "vocab_size": 262144,
                     "max_position_embeddings": 32768, "rope_scaling": None},
    "gemma-3-1b": {"hidden_size": 1152, "intermediate_size": 6912, "num_hidden_layers": 26,
                   "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
                   "query_pre_attn_scalar": 256, "sliding_window": 512, "vocab_size": 262144,
                   "max_position_embeddings": 32768, "rope_scaling": None},
    "gemma-3-4b-text": {"hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 34,
                        "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
                        "query_pre_attn_scalar": 256, "sliding_window": 1024,
                        "vocab_size": 262208, "max_position_embeddings": 131072,
                        "rope_scaling": {"rope_type": "linear", "factor": 8.0}},
    "gemma-3-27b-text": {"hidden_size": 5376, "intermediate_size": 21504,
                         "num_hidden_layers": 62, "num_attention_heads": 32,
                         "num_key_value_heads": 16, "head_dim": 128,
                         "query_pre_attn_scalar": 168, "sliding_window": 1024,
                         "vocab_size": 262208, "max_position_embeddings": 131072,
                         "rope_scaling": {"rope_type": "linear", "factor": 8.0}},
}  # fmt: skip
ARCH = "Gemma3ForCausalLM"


def released_config(shape: str) -> dict[str, Any]:
    """The config.json of a released checkpoint of this size, in its own spelling."""
    return {
        "architectures": [ARCH],
        "model_type": "gemma3_text",
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0,
        "sliding_window_pattern": 6,
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
        **PUBLISHED[shape],
    }


@pytest.mark.parametrize("shape", sorted(PUBLISHED))
def test_published_shapes_load_every_hf_tensor_exactly(shape: str) -> None:
    import transformers

    from mono_llm.core.models.llama import LlamaForCausalLM, LlamaSettings
    from mono_llm.core.models.loader import mapped_weights
    from mono_llm.core.models.registry import resolve_spec

    released = released_config(shape)
    config = transformers.Gemma3TextConfig(**released)
    saved = config.to_dict()  # transformers 5's spelling: rope_parameters, layer_types
    assert "rope_parameters" in saved and "layer_types" in saved
    settings = LlamaSettings.from_hf(saved, ARCH, 4096)
    assert LlamaSettings.from_hf(released, ARCH, 4096) == settings
    with torch.device("meta"):
        hf = transformers.Gemma3ForCausalLM(config)
        ours = LlamaForCausalLM(settings)
    state = hf.state_dict()
    assert "model.layers.0.self_attn.q_norm.weight" in state
    loaded = ours.load_weights(mapped_weights(iter(state.items()), resolve_spec([ARCH]).weights))
    assert loaded == ours.expected_weights()
    # Tied head: the embedding counted once on both sides.
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())

    layers = released["num_hidden_layers"]
    full = [i for i in range(layers) if (i + 1) % 6 == 0]
    assert [i for i, kind in enumerate(saved["layer_types"]) if kind == "full_attention"] == full
    assert settings.attention_scale == pytest.approx(released["query_pre_attn_scalar"] ** -0.5)
    assert settings.attn_softcap is None and settings.final_softcap is None
    global_rope, local_rope = ours.rotary_embeddings()
    assert (global_rope.base, global_rope.rope_scaling) == (1e6, released["rope_scaling"])
    assert (local_rope.base, local_rope.rope_scaling) == (1e4, None)
    for i, layer in enumerate(ours.model.layers):
        attention = layer.self_attn
        is_full = i in full
        assert attention.attn.sliding_window == (None if is_full else released["sliding_window"])
        assert attention._rotary[0] is (global_rope if is_full else local_rope)
        assert attention.qk_norm and attention.q_norm.unit_offset
