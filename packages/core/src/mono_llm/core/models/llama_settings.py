"""The switches that tell the Llama family's members apart, read from an HF text config.

models/llama.py builds one module tree for Llama, Mistral, Qwen2/3, Phi-3, Gemma 1/2/3, Granite
and OLMo 2; which member it is, and how that member's config.json spells its options, is
decided here once, so the model code only reads `LlamaSettings` fields.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from mono_llm.core.config import sliding_window_in_use
from mono_llm.core.errors import UnsupportedModelError
from mono_llm.core.layers.rotary import partial_rotary_dim, rope_settings

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class LlamaSettings:
    """The switches that tell the family members apart, read from an HF text config."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rotary_dim: int  # leading dims of each head that RoPE rotates (Phi-4-mini: 3/4 of them)
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    max_position: int
    context_len: int  # the longest sequence served: picks LongRoPE's long or short factors
    qkv_bias: bool  # Qwen2: bias on q/k/v only; Llama `attention_bias`: on q/k/v and o
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool  # Qwen3
    tie_word_embeddings: bool
    # "silu" (SwiGLU) or a GeGLU: "gelu_tanh" (Gemma's gelu_pytorch_tanh) or "gelu" (erf).
    activation: str = "silu"
    # Gemma: every RMSNorm scales by 1 + weight (in float32), and the token embeddings are
    # multiplied by sqrt(hidden_size) rounded to the model dtype.
    norm_unit_offset: bool = False
    embed_scale: float | None = None
    # Gemma 2: a norm on the attention output and on the MLP's input and output ("sandwich"),
    # attention scale query_pre_attn_scalar**-0.5, tanh soft-capping of attention scores and of
    # the logits, and a sliding window (or None: full attention) per layer.
    sandwich_norms: bool = False
    attention_scale: float | None = None  # None: head_dim**-0.5
    attn_softcap: float | None = None
    final_softcap: float | None = None
    layer_windows: tuple[int | None, ...] = ()
    # Granite: embeddings times embedding_multiplier (not rounded to the model dtype, unlike
    # Gemma's scale), each attention / MLP output times residual_multiplier before it joins the
    # residual stream, logits divided by logits_scaling (attention_multiplier: attention_scale).
    embedding_multiplier: float | None = None
    residual_multiplier: float | None = None
    logits_scaling: float | None = None
    # OLMo 2: no norm before attention or the MLP; a norm on each one's output instead, and
    # q_norm / k_norm over the whole q and k projections (all heads at once) before RoPE.
    post_norms: bool = False
    # Gemma 3: the sliding layers rotate with their own base (unscaled in released configs)
    # while the full layers keep rope_theta / rope_scaling; `sliding_layers` says which is which.
    local_rope_theta: float | None = None
    local_rope_scaling: dict[str, Any] | None = None
    sliding_layers: tuple[bool, ...] = ()

    @classmethod
    def from_hf(
        cls, config: dict[str, Any], architecture: str, max_model_len: int | None = None
    ) -> LlamaSettings:
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        is_gemma3 = architecture == "Gemma3ForCausalLM"
        # Gemma 2 and 3: sandwich norms, query_pre_attn_scalar, per-layer sliding windows.
        gemma2_layout = is_gemma3 or architecture == "Gemma2ForCausalLM"
        is_gemma = gemma2_layout or architecture == "GemmaForCausalLM"
        is_granite = architecture == "GraniteForCausalLM"
        is_olmo2 = architecture == "Olmo2ForCausalLM"
        if is_gemma3 and config.get("use_bidirectional_attention"):
            # EmbeddingGemma: every layer attends both ways, which the paged causal kernels
            # do not do; running it causally would give wrong embeddings without a word.
            raise UnsupportedModelError(
                f"{architecture}: use_bidirectional_attention=true (EmbeddingGemma) is not "
                "supported; mono-llm runs Gemma 3 text models with causal attention only."
            )
        num_layers = int(config["num_hidden_layers"])
        theta, scaling = rope_settings(config)
        if is_gemma3 and "rope_theta" not in config and "rope_parameters" not in config:
            theta = 1_000_000.0  # transformers' default global base for Gemma 3
        sliding = _sliding_layers(config, num_layers, architecture) if gemma2_layout else ()
        local_theta, local_scaling = _local_rope(config) if is_gemma3 else (None, None)
        trained = int(config.get("max_position_embeddings", 2048))
        attention_bias = bool(config.get("attention_bias", False))
        is_qwen2 = architecture == "Qwen2ForCausalLM"
        head_dim = int(config.get("head_dim") or hidden // heads)
        window = sliding_window_in_use(config)
        if (
            not gemma2_layout
            and window is not None
            and max_model_len is not None
            and max_model_len > window
        ):
            # EngineArgs caps max_model_len to the window; a caller that builds the model
            # directly with a longer context gets full attention past it, so say so.
            logger.warning(
                "%s: sliding_window=%s is not implemented; attention spans the full context, "
                "which differs from the reference past %s tokens.",
                architecture,
                window,
                window,
            )
        return cls(
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(config["intermediate_size"]),
            num_layers=num_layers,
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=head_dim,
            # transformers' Llama / Mistral / Qwen rotate whole heads whatever the config says.
            rotary_dim=(
                partial_rotary_dim(config, head_dim)
                if architecture == "Phi3ForCausalLM"
                else head_dim
            ),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position=max(trained, max_model_len or 0),
            context_len=max_model_len or trained,
            qkv_bias=is_qwen2 or attention_bias,
            o_bias=attention_bias and not is_qwen2,
            mlp_bias=bool(config.get("mlp_bias", False)),
            qk_norm=architecture in ("Qwen3ForCausalLM", "Gemma3ForCausalLM") or is_olmo2,
            tie_word_embeddings=bool(config.get("tie_word_embeddings", is_gemma)),
            activation=_activation(config, architecture),
            norm_unit_offset=is_gemma,
            embed_scale=hidden**0.5 if is_gemma else None,
            sandwich_norms=gemma2_layout,
            attention_scale=(
                float(config.get("query_pre_attn_scalar") or 256) ** -0.5
                if gemma2_layout
                else _multiplier(config, "attention_multiplier")
                if is_granite
                else None
            ),
            attn_softcap=_softcap(config, "attn_logit_softcapping") if gemma2_layout else None,
            final_softcap=_softcap(config, "final_logit_softcapping") if gemma2_layout else None,
            layer_windows=_layer_windows(config, sliding) if gemma2_layout else (),
            local_rope_theta=local_theta,
            local_rope_scaling=local_scaling,
            sliding_layers=sliding,
            embedding_multiplier=_multiplier(config, "embedding_multiplier")
            if is_granite
            else None,
            residual_multiplier=_multiplier(config, "residual_multiplier") if is_granite else None,
            logits_scaling=_multiplier(config, "logits_scaling") if is_granite else None,
            post_norms=is_olmo2,
        )


def _softcap(config: dict[str, Any], key: str) -> float | None:
    value = config.get(key)
    return float(value) if value else None


def _multiplier(config: dict[str, Any], key: str) -> float:
    """A Granite constant; transformers' GraniteConfig defaults each to 1."""
    value = config.get(key)
    return 1.0 if value is None else float(value)


def _sliding_layers(config: dict[str, Any], num_layers: int, architecture: str) -> tuple[bool, ...]:
    """Which layers are sliding-attention layers: `layer_types` when the config spells them
    out (transformers 5), else the released models' pattern. Gemma 2: even layers. Gemma 3:
    every layer but each `sliding_window_pattern`-th (6: five sliding, then one full)."""
    layer_types = config.get("layer_types")
    if isinstance(layer_types, list) and len(layer_types) == num_layers:
        return tuple(kind == "sliding_attention" for kind in layer_types)
    if architecture == "Gemma3ForCausalLM":
        pattern = config.get("sliding_window_pattern") or config.get("_sliding_window_pattern")
        pattern = int(pattern) if isinstance(pattern, int) and pattern > 0 else 6
        return tuple(bool((i + 1) % pattern) for i in range(num_layers))
    return tuple(i % 2 == 0 for i in range(num_layers))


def _layer_windows(config: dict[str, Any], sliding: tuple[bool, ...]) -> tuple[int | None, ...]:
    """Each layer's attention window (None: full attention)."""
    window = config.get("sliding_window")
    if not isinstance(window, int) or window <= 0:
        return (None,) * len(sliding)
    return tuple(window if is_sliding else None for is_sliding in sliding)


def _local_rope(config: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """Gemma 3's sliding-layer rotary settings: transformers 5's
    `rope_parameters["sliding_attention"]`, else the released configs' `rope_local_base_freq`
    (10000 when absent), never scaled (`rope_scaling` belongs to the full layers)."""
    params = config.get("rope_parameters")
    if isinstance(params, dict) and isinstance(params.get("sliding_attention"), dict):
        local = params["sliding_attention"]
        if "rope_theta" not in local:
            local = {**local, "rope_theta": config.get("rope_local_base_freq") or 10000.0}
        return rope_settings(
            {**config, "rope_parameters": {"sliding_attention": local}}, "sliding_attention"
        )
    return float(config.get("rope_local_base_freq") or 10000.0), None


# HF activation names (ACT2FN keys) -> the gated MLP's activation.
_ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",  # the same tanh approximation, written out
    "gelu": "gelu",
}


def _activation(config: dict[str, Any], architecture: str) -> str:
    """The MLP activation the reference applies for this config."""
    default = "gelu_pytorch_tanh" if architecture == "GemmaForCausalLM" else "silu"
    name = config.get("hidden_act") or config.get("hidden_activation") or default
    if architecture in ("Gemma2ForCausalLM", "Gemma3ForCausalLM"):  # they read hidden_activation
        name = config.get("hidden_activation") or "gelu_pytorch_tanh"
    if architecture == "GemmaForCausalLM" and name == "gelu":
        # As transformers: the first Gemma releases wrote "gelu" for the tanh approximation
        # they were trained with.
        name = "gelu_pytorch_tanh"
    if name not in _ACTIVATIONS:
        raise UnsupportedModelError(f"{architecture}: hidden_act={name!r} is not supported")
    return _ACTIVATIONS[name]
