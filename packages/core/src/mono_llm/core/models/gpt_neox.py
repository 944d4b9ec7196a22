"""GPT-NeoX (EleutherAI's Pythia 14m ... 12b, GPT-NeoX-20B, and other `model_type:
"gpt_neox"` models), config-driven for every size.

What config.json switches:
- rotary positions on the first `rotary_pct` of each head (partial rotary, 0.25 by default),
  base `rotary_emb_base` (transformers 5 writes both into `rope_parameters`), NeoX's
  rotate-half layout;
- `use_parallel_residual`: attention and MLP both read the block's input and are added
  together (x + attn(ln1(x)) + mlp(ln2(x)), every Pythia and NeoX-20B), or run one after the
  other;
- LayerNorms with `layer_norm_eps`; `hidden_act` (gelu for Pythia, gelu_fast for NeoX-20B);
  `attention_bias`; `tie_word_embeddings` (off in the released models: `embed_out` is its own
  matrix, which transformers 5 saves as `lm_head`).

The checkpoint's fused `query_key_value` is laid out per head, [heads, 3 (q, k, v),
head_dim] along its output; load_weights reorders it into q | k | v blocks so the forward
splits it with one `split`. Module names follow transformers' `GPTNeoXForCausalLM`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mono_llm.core.errors import UnsupportedModelError
from mono_llm.core.layers.attention import ForwardContext, PagedAttention
from mono_llm.core.layers.rotary import RotaryEmbedding, partial_rotary_dim, rope_settings
from mono_llm.core.models.opt import activation_fn
from mono_llm.core.models.text_decoder import TextDecoderLM
from mono_llm.core.models.weight_loading import checkpoint_param, copy_checkpoint_tensor


@dataclass(slots=True)
class GPTNeoXSettings:
    """The config.json fields the model reads (defaults are transformers' GPTNeoXConfig ones)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    rotary_dim: int
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    max_position: int  # rows of the rope table
    context_len: int
    layer_norm_eps: float
    activation: Callable[[torch.Tensor], torch.Tensor]
    parallel_residual: bool
    attention_bias: bool
    tie_word_embeddings: bool

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf(cls, config: dict[str, Any], max_model_len: int | None = None) -> GPTNeoXSettings:
        try:
            hidden = int(config["hidden_size"])
            heads = int(config["num_attention_heads"])
            if hidden % heads:
                raise UnsupportedModelError(
                    f"GPT-NeoX: hidden_size={hidden} is not divisible by "
                    f"num_attention_heads={heads}"
                )
            rope = _rope_config(config)
            theta, scaling = rope_settings(rope)
            trained = int(config.get("max_position_embeddings", 2048))
            return cls(
                vocab_size=int(config["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(config["intermediate_size"]),
                num_layers=int(config["num_hidden_layers"]),
                num_heads=heads,
                rotary_dim=partial_rotary_dim(rope, hidden // heads),
                rope_theta=theta,
                rope_scaling=scaling,
                max_position=max(trained, max_model_len or 0),
                context_len=max_model_len or trained,
                layer_norm_eps=float(config.get("layer_norm_eps", 1e-5)),
                activation=activation_fn(
                    "GPT-NeoX", "hidden_act", str(config.get("hidden_act", "gelu"))
                ),
                parallel_residual=bool(config.get("use_parallel_residual", True)),
                attention_bias=bool(config.get("attention_bias", True)),
                tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            )
        except KeyError as exc:
            raise UnsupportedModelError(f"GPT-NeoX config.json lacks {exc.args[0]!r}") from exc


def _rope_config(config: dict[str, Any]) -> dict[str, Any]:
    """config.json with GPT-NeoX's own rope names (`rotary_pct`, `rotary_emb_base`) under
    the generic ones `rope_settings` / `partial_rotary_dim` read, unless already there."""
    view = dict(config)
    params = config.get("rope_parameters")
    params = params if isinstance(params, dict) else {}
    if "partial_rotary_factor" not in view and "partial_rotary_factor" not in params:
        view["partial_rotary_factor"] = config.get("rotary_pct", 0.25)
    if "rope_theta" not in view and "rope_theta" not in params:
        view["rope_theta"] = config.get("rotary_emb_base", 10000.0)
    return view


class GPTNeoXAttention(nn.Module):
    def __init__(
        self, s: GPTNeoXSettings, rotary: RotaryEmbedding, context: ForwardContext
    ) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.size = s.num_heads, s.head_dim, s.hidden_size
        # Rows held as q | k | v blocks (load_weights reorders the checkpoint's per-head layout).
        self.query_key_value = nn.Linear(s.hidden_size, 3 * s.hidden_size, bias=s.attention_bias)
        self.dense = nn.Linear(s.hidden_size, s.hidden_size, bias=s.attention_bias)
        self._rotary = (rotary,)  # shared by every layer; a tuple keeps it out of the module tree
        self.attn = PagedAttention(s.num_heads, s.num_heads, s.head_dim, s.head_dim**-0.5, context)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        qkv = self.query_key_value(hidden)  # [num_tokens, 3 * hidden]
        shape = (-1, self.num_heads, self.head_dim)
        q, k, v = (t.view(shape) for t in qkv.split(self.size, dim=-1))
        q, k = self._rotary[0](positions, q, k)  # rotates the first rotary_dim of each head
        out = self.attn(q, k, v)  # [num_tokens, num_heads, head_dim]
        return self.dense(out.reshape(-1, self.size))


class GPTNeoXMLP(nn.Module):
    def __init__(self, s: GPTNeoXSettings) -> None:
        super().__init__()
        self.dense_h_to_4h = nn.Linear(s.hidden_size, s.intermediate_size)
        self.dense_4h_to_h = nn.Linear(s.intermediate_size, s.hidden_size)
        self._act = (s.activation,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(self._act[0](self.dense_h_to_4h(x)))


class GPTNeoXLayer(nn.Module):
    def __init__(
        self, s: GPTNeoXSettings, rotary: RotaryEmbedding, context: ForwardContext
    ) -> None:
        super().__init__()
        self.parallel_residual = s.parallel_residual
        self.input_layernorm = nn.LayerNorm(s.hidden_size, eps=s.layer_norm_eps)
        self.post_attention_layernorm = nn.LayerNorm(s.hidden_size, eps=s.layer_norm_eps)
        self.attention = GPTNeoXAttention(s, rotary, context)
        self.mlp = GPTNeoXMLP(s)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [num_tokens, hidden] -> same shape."""
        attn = self.attention(positions, self.input_layernorm(hidden))
        if self.parallel_residual:  # both sub-blocks read the block's input
            return hidden + attn + self.mlp(self.post_attention_layernorm(hidden))
        hidden = hidden + attn
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class GPTNeoXModel(nn.Module):
    def __init__(self, s: GPTNeoXSettings) -> None:
        super().__init__()
        # One per model instance: the runner installs each step's attention metadata here.
        self.forward_context = ForwardContext()
        self.rotary_emb = RotaryEmbedding(
            s.head_dim,
            s.max_position,
            s.rope_theta,
            s.rope_scaling,
            rotary_dim=s.rotary_dim,
            context_len=s.context_len,
        )
        self.embed_in = nn.Embedding(s.vocab_size, s.hidden_size)
        self.layers = nn.ModuleList(
            GPTNeoXLayer(s, self.rotary_emb, self.forward_context) for _ in range(s.num_layers)
        )
        self.final_layer_norm = nn.LayerNorm(s.hidden_size, eps=s.layer_norm_eps)

    def forward(self, inputs_embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden = inputs_embeds
        for layer in self.layers:
            hidden = layer(positions, hidden)
        return self.final_layer_norm(hidden)


class GPTNeoXForCausalLM(TextDecoderLM):
    """GPT-NeoX body + `embed_out` (the LM head, untied unless the config ties it).

    Implements the engine's model interface (models/interface.py `EngineModel`).
    """

    def __init__(self, settings: GPTNeoXSettings) -> None:
        super().__init__()
        self.settings = settings
        self.gpt_neox = GPTNeoXModel(settings)
        self.embed_out = nn.Linear(settings.hidden_size, settings.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the embedding with the head when the config says so (again after
        `to_empty`, which materialises each module's parameters separately)."""
        if self.settings.tie_word_embeddings:
            self.embed_out.weight = self.gpt_neox.embed_in.weight

    @classmethod
    def from_hf_config(
        cls, config: dict[str, Any], architecture: str, max_model_len: int | None = None
    ) -> GPTNeoXForCausalLM:
        return cls(GPTNeoXSettings.from_hf(config, max_model_len))

    @property
    def forward_context(self) -> ForwardContext:
        return self.gpt_neox.forward_context

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.gpt_neox.embed_in(input_ids)  # [num_tokens, hidden]

    def decode(self, inputs_embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.gpt_neox(inputs_embeds, positions)  # [num_tokens, hidden]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[rows, hidden] -> float32 logits [rows, vocab]."""
        return self.embed_out(hidden).float()

    def attention_layers(self) -> list[PagedAttention]:
        return [layer.attention.attn for layer in self.gpt_neox.layers]

    def rotary_embeddings(self) -> list[RotaryEmbedding]:
        return [self.gpt_neox.rotary_emb]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Copy checkpoint tensors into the parameters; returns the names loaded. Names
        arrive mapped by the registry's `WeightNaming`; query_key_value is reordered here."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            if name == "embed_out.weight" and self.settings.tie_word_embeddings:
                continue  # the embedding is the head
            param = checkpoint_param(params, name)
            if ".attention.query_key_value." in name:
                tensor = self._qkv_blocks(name, tensor)
            copy_checkpoint_tensor(param, name, tensor)
            loaded.add(name)
        return loaded

    def _qkv_blocks(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """The checkpoint's per-head rows [heads, 3, head_dim] as q | k | v blocks."""
        s = self.settings
        if tensor.shape[0] != 3 * s.hidden_size:
            raise UnsupportedModelError(
                f"checkpoint tensor {name} has {tensor.shape[0]} q/k/v rows, the model "
                f"expects {3 * s.hidden_size} (3 x hidden_size)"
            )
        per_head = tensor.unflatten(0, (s.num_heads, 3, s.head_dim))
        return per_head.transpose(0, 1).flatten(0, 2)

    def expected_weights(self) -> set[str]:
        """Names `load_weights` reports once a complete checkpoint has been read."""
        return {name for name, _ in self.named_parameters()}
