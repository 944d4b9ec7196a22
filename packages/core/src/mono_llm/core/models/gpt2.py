"""GPT-2 (gpt2, gpt2-medium / large / xl, distilgpt2, and other `model_type: "gpt2"` models).

A GPT-2 block is OPT's pre-LayerNorm block: LayerNorm, fused q/k/v attention with biases,
output projection, residual; LayerNorm, fc -> activation -> fc, residual; learned absolute
positions added to the token embeddings, a final LayerNorm, and an lm_head tied to the token
embedding. So the model is `models/opt.py`'s, built with GPT-2's switches:
- positions read row `position` of `wpe` (no offset), up to `n_positions` (the context window);
- `layer_norm_epsilon`; `activation_function` (gelu_new, the tanh approximation, by default);
  `n_inner` (4 * n_embd when null);
- `scale_attn_weights` (scores times head_dim**-0.5, on by default) and
  `scale_attn_by_inverse_layer_idx` (layer i's scores also divided by i + 1);
- `reorder_and_upcast_attn` computes the scores and the softmax in float32, which the
  engine's attention kernels always do, so it needs nothing here.
`add_cross_attention` (GPT-2 as the decoder of an encoder-decoder) is refused.

Checkpoint names (`transformer.h.N.attn.c_attn...`, or bare `h.N...` in old exports) are
mapped onto OPT's parameter names by the registry's `WeightNaming`, which also drops the
`.attn.bias` / `.attn.masked_bias` mask buffers old checkpoints store. What is left here is
GPT-2's storage: its `Conv1D` layers keep weights as [in, out], transposed at load, and
`c_attn` holds q, k and v stacked along the output, split into the three shards.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from mono_llm.core.distributed.group import TensorParallelGroup
from mono_llm.core.errors import UnsupportedModelError
from mono_llm.core.models.opt import OPTForCausalLM, OPTSettings, check_learned_positions

# Parameter names (after the registry's mapping) of the layers GPT-2 stores as Conv1D.
_CONV1D_WEIGHTS = (
    ".self_attn.c_attn.weight",
    ".self_attn.out_proj.weight",
    ".fc1.weight",
    ".fc2.weight",
)
_FUSED_QKV = ".self_attn.c_attn."


def _field(config: dict[str, Any], *keys: str) -> Any:
    """The first of `keys` config.json has (GPT-2 configs write `n_embd`, `n_layer`...;
    configs saved through the generic names write `hidden_size`, `num_hidden_layers`...)."""
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    raise UnsupportedModelError(f"GPT-2 config.json lacks {keys[0]!r}")


def gpt2_settings(config: dict[str, Any], max_model_len: int | None = None) -> OPTSettings:
    """OPT settings that build GPT-2 from its config.json; refuses what it cannot run."""
    if config.get("add_cross_attention"):
        raise UnsupportedModelError(
            "GPT-2: add_cross_attention=true (GPT-2 as an encoder-decoder's decoder) is not "
            "supported"
        )
    hidden = int(_field(config, "n_embd", "hidden_size"))
    trained = int(_field(config, "n_positions", "max_position_embeddings"))
    check_learned_positions("GPT-2", "n_positions", trained, max_model_len)
    return OPTSettings(
        vocab_size=int(_field(config, "vocab_size")),
        hidden_size=hidden,
        word_embed_proj_dim=hidden,
        ffn_dim=int(config.get("n_inner") or 4 * hidden),
        num_layers=int(_field(config, "n_layer", "num_hidden_layers")),
        num_heads=int(_field(config, "n_head", "num_attention_heads")),
        max_position=trained,
        do_layer_norm_before=True,
        final_layer_norm=True,
        enable_bias=True,
        layer_norm_affine=True,
        activation=str(config.get("activation_function") or "gelu_new"),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", True)),
        position_offset=0,
        layer_norm_eps=float(config.get("layer_norm_epsilon", 1e-5)),
        scale_attn_weights=bool(config.get("scale_attn_weights", True)),
        scale_attn_by_inverse_layer_idx=bool(config.get("scale_attn_by_inverse_layer_idx")),
        family="GPT-2",
    )


class GPT2LMHeadModel(OPTForCausalLM):
    """GPT-2 with its tied LM head: OPT's model with GPT-2's settings and weight storage.

    Implements the engine's model interface (models/interface.py `EngineModel`).
    """

    @classmethod
    def from_hf_config(
        cls,
        config: dict[str, Any],
        architecture: str,
        max_model_len: int | None = None,
        tp: TensorParallelGroup | None = None,
    ) -> GPT2LMHeadModel:
        return cls(gpt2_settings(config, max_model_len), tp)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Transpose the Conv1D weights and split c_attn into q/k/v, then load as OPT does."""
        return super().load_weights(self._as_linear(weights))

    def _as_linear(
        self, weights: Iterable[tuple[str, torch.Tensor]]
    ) -> Iterator[tuple[str, torch.Tensor]]:
        hidden = self.settings.hidden_size
        for name, tensor in weights:
            if name.endswith(_CONV1D_WEIGHTS) and tensor.dim() == 2:
                tensor = tensor.t()  # Conv1D's [in, out] -> Linear's [out, in]
            if _FUSED_QKV not in name:
                yield name, tensor
                continue
            if tensor.shape[0] != 3 * hidden:
                raise UnsupportedModelError(
                    f"checkpoint tensor {name} has {tensor.shape[0]} q/k/v rows, the model "
                    f"expects {3 * hidden} (3 x n_embd)"
                )
            for shard, part in zip("qkv", tensor.split(hidden, dim=0), strict=True):
                yield name.replace(_FUSED_QKV, f".self_attn.{shard}_proj."), part
