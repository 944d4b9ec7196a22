"""OPT (Meta's Open Pre-trained Transformers, 125m ... 66b), config-driven for every size.

The published sizes differ in more than widths, and each switch is read from config.json:
- learned absolute positions, looked up at `position + 2` (the first two rows of
  `embed_positions` are a fairseq padding offset that HF keeps in the checkpoint);
- `do_layer_norm_before`: pre-LayerNorm blocks (every size but 350m) or post-LayerNorm (350m);
- `word_embed_proj_dim` != `hidden_size` (350m): the embeddings and the lm_head are narrower
  than the body, with `project_in` after the lookup and `project_out` before the lm_head;
- a final LayerNorm only for pre-LN models, and not when `_remove_final_layer_norm` is set;
- `enable_bias` (q/k/v/out and fc1/fc2), `layer_norm_elementwise_affine`,
  `activation_function` (relu in the published checkpoints), `tie_word_embeddings`.

Module and parameter names follow transformers' `OPTForCausalLM` (`model.decoder.layers.N...`)
except the fused `qkv_proj`, assembled by `load_weights` from q/k/v_proj. Checkpoints that
store the body bare (`decoder.*`, as opt-125m's pytorch_model.bin) get `model.` from the
registry's weight naming.

Engine-side shapes: `embed_input_ids` returns the embeddings already projected to
`hidden_size` (what the first layer adds the positions to), and `forward` returns the final
hidden states before `project_out`, so the runner's inputs_embeds and hidden-state buffers
are `hidden_size` wide for every size; `compute_logits` applies `project_out` and the lm_head.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mono_llm.core.distributed.group import TensorParallelGroup
from mono_llm.core.errors import UnsupportedModelError
from mono_llm.core.layers.attention import ForwardContext, PagedAttention
from mono_llm.core.layers.linear import MergedLinear
from mono_llm.core.layers.parallel import (
    ParallelLMHead,
    RowParallelLinear,
    VocabParallelEmbedding,
    attention_head_split,
    divide,
)
from mono_llm.core.layers.rotary import RotaryEmbedding
from mono_llm.core.models.text_decoder import TextDecoderLM
from mono_llm.core.models.weight_loading import checkpoint_param, copy_checkpoint_tensor

# transformers' ACT2FN names that OPT, GPT-2 and GPT-NeoX configs use ("gelu_new",
# "gelu_fast" and "gelu_pytorch_tanh" are the same tanh approximation, written three ways).
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "swish": F.silu,
}


def activation_fn(family: str, key: str, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation config.json field `key` names; an unknown one is refused, naming it."""
    if name not in ACTIVATIONS:
        raise UnsupportedModelError(
            f"{family}: {key}={name!r} is not supported "
            f"(supported: {', '.join(sorted(ACTIVATIONS))})"
        )
    return ACTIVATIONS[name]


# HF's OPTLearnedPositionalEmbedding: position p reads row p + 2.
POSITION_OFFSET = 2
# OPT's LayerNorms are torch's default (config.json has no epsilon field).
_LAYER_NORM_EPS = 1e-5


@dataclass(slots=True)
class OPTSettings:
    """The config.json fields the model reads (defaults are transformers' OPTConfig ones)."""

    vocab_size: int
    hidden_size: int
    word_embed_proj_dim: int
    ffn_dim: int
    num_layers: int
    num_heads: int
    max_position: int
    do_layer_norm_before: bool
    final_layer_norm: bool
    enable_bias: bool
    layer_norm_affine: bool
    activation: str
    tie_word_embeddings: bool
    # The switches below keep OPT's values; GPT-2 (models/gpt2.py), the same pre-LN block
    # with learned positions, builds this model with its own.
    position_offset: int = POSITION_OFFSET
    layer_norm_eps: float = _LAYER_NORM_EPS
    scale_attn_weights: bool = True  # scores times head_dim**-0.5
    scale_attn_by_inverse_layer_idx: bool = False  # scores of layer i also divided by i + 1
    family: str = "OPT"  # the name errors give the model

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise UnsupportedModelError(
                f"{self.family}: hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_heads}"
            )
        activation_fn(self.family, "activation_function", self.activation)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def attention_scale(self, layer_idx: int) -> float:
        """The factor on layer `layer_idx`'s q.k scores."""
        scale = self.head_dim**-0.5 if self.scale_attn_weights else 1.0
        return scale / (layer_idx + 1) if self.scale_attn_by_inverse_layer_idx else scale

    @property
    def projects_embeddings(self) -> bool:
        """Whether the embeddings are narrower than the body (opt-350m)."""
        return self.word_embed_proj_dim != self.hidden_size

    @classmethod
    def from_hf(cls, config: dict[str, Any], max_model_len: int | None = None) -> OPTSettings:
        try:
            hidden = int(config["hidden_size"])
            trained = int(config.get("max_position_embeddings", 2048))
            check_learned_positions("OPT", "max_position_embeddings", trained, max_model_len)
            pre_norm = bool(config.get("do_layer_norm_before", True))
            return cls(
                vocab_size=int(config["vocab_size"]),
                hidden_size=hidden,
                word_embed_proj_dim=int(config.get("word_embed_proj_dim") or hidden),
                ffn_dim=int(config["ffn_dim"]),
                num_layers=int(config["num_hidden_layers"]),
                num_heads=int(config["num_attention_heads"]),
                max_position=trained,
                do_layer_norm_before=pre_norm,
                final_layer_norm=pre_norm and not config.get("_remove_final_layer_norm", False),
                enable_bias=bool(config.get("enable_bias", True)),
                layer_norm_affine=bool(config.get("layer_norm_elementwise_affine", True)),
                activation=str(config.get("activation_function", "relu")),
                tie_word_embeddings=bool(config.get("tie_word_embeddings", True)),
            )
        except KeyError as exc:
            raise UnsupportedModelError(f"OPT config.json lacks {exc.args[0]!r}") from exc


def check_learned_positions(family: str, key: str, trained: int, max_model_len: int | None) -> None:
    """Learned positions have no row past the trained context: refuse a longer one rather
    than index out of the table."""
    if max_model_len is not None and max_model_len > trained:
        raise UnsupportedModelError(
            f"{family}: max_model_len={max_model_len} exceeds {key}={trained} "
            "(learned positions cannot extrapolate)"
        )


def _layer_norm(s: OPTSettings) -> nn.LayerNorm:
    return nn.LayerNorm(s.hidden_size, eps=s.layer_norm_eps, elementwise_affine=s.layer_norm_affine)


class OPTAttention(nn.Module):
    def __init__(
        self, s: OPTSettings, layer_idx: int, context: ForwardContext, tp: TensorParallelGroup
    ) -> None:
        super().__init__()
        split = attention_head_split(s.num_heads, s.num_heads, tp)
        self.num_heads, self.head_dim = split.heads, s.head_dim
        self.size = self.num_heads * s.head_dim  # this rank's q (and k, v) width
        sources = None
        if tp.is_parallel:
            start = split.first_head * s.head_dim
            sources = {"q": start, "k": start, "v": start}
        self.qkv_proj = MergedLinear(
            s.hidden_size, {"q": self.size, "k": self.size, "v": self.size}, s.enable_bias, sources
        )
        self.out_proj = RowParallelLinear(s.hidden_size, s.hidden_size, s.enable_bias, tp)
        self.attn = PagedAttention(
            self.num_heads, self.num_heads, s.head_dim, s.attention_scale(layer_idx), context
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv_proj(hidden)  # [num_tokens, 3 * size]
        shape = (-1, self.num_heads, self.head_dim)
        q, k, v = (t.view(shape) for t in qkv.split(self.size, dim=-1))
        out = self.attn(q, k, v)  # [num_tokens, num_heads, head_dim]
        return self.out_proj(out.reshape(-1, self.size))


class OPTDecoderLayer(nn.Module):
    def __init__(
        self, s: OPTSettings, layer_idx: int, context: ForwardContext, tp: TensorParallelGroup
    ) -> None:
        super().__init__()
        self.pre_norm = s.do_layer_norm_before
        self.self_attn = OPTAttention(s, layer_idx, context, tp)
        self.self_attn_layer_norm = _layer_norm(s)
        ffn = divide(s.ffn_dim, tp.size, "ffn_dim")
        # Column-parallel: a merged linear of one shard is a plain linear sliced by rows.
        self.fc1 = MergedLinear(
            s.hidden_size,
            {"fc1": ffn},
            s.enable_bias,
            {"fc1": tp.rank * ffn} if tp.is_parallel else None,
        )
        self.fc2 = RowParallelLinear(s.ffn_dim, s.hidden_size, s.enable_bias, tp)
        self.final_layer_norm = _layer_norm(s)
        self.act = ACTIVATIONS[s.activation]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [num_tokens, hidden] -> same shape. Pre-LN normalises each sub-block's
        input; post-LN (opt-350m) normalises each sub-block's output after the residual."""
        x = self.self_attn_layer_norm(hidden) if self.pre_norm else hidden
        hidden = hidden + self.self_attn(x)
        if not self.pre_norm:
            hidden = self.self_attn_layer_norm(hidden)
        x = self.final_layer_norm(hidden) if self.pre_norm else hidden
        hidden = hidden + self.fc2(self.act(self.fc1(x)))
        if not self.pre_norm:
            hidden = self.final_layer_norm(hidden)
        return hidden


class OPTDecoder(nn.Module):
    def __init__(self, s: OPTSettings, tp: TensorParallelGroup) -> None:
        super().__init__()
        # One per model instance: the runner installs each step's attention metadata here.
        self.forward_context = ForwardContext()
        self.embed_tokens = VocabParallelEmbedding(s.vocab_size, s.word_embed_proj_dim, tp)
        self.position_offset = s.position_offset
        self.embed_positions = nn.Embedding(s.max_position + s.position_offset, s.hidden_size)
        if s.projects_embeddings:
            self.project_in = nn.Linear(s.word_embed_proj_dim, s.hidden_size, bias=False)
            self.project_out = nn.Linear(s.hidden_size, s.word_embed_proj_dim, bias=False)
        else:
            self.project_in = self.project_out = None
        self.final_layer_norm = _layer_norm(s) if s.final_layer_norm else None
        self.layers = nn.ModuleList(
            OPTDecoderLayer(s, i, self.forward_context, tp) for i in range(s.num_layers)
        )

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [num_tokens] -> token embeddings in the body's width [num_tokens, hidden]."""
        embeds = self.embed_tokens(input_ids)  # [num_tokens, word_embed_proj_dim]
        return embeds if self.project_in is None else self.project_in(embeds)

    def forward(self, inputs_embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden = inputs_embeds + self.embed_positions(positions + self.position_offset)
        for layer in self.layers:
            hidden = layer(hidden)
        if self.final_layer_norm is not None:
            hidden = self.final_layer_norm(hidden)
        return hidden  # [num_tokens, hidden]


class OPTModel(nn.Module):
    def __init__(self, s: OPTSettings, tp: TensorParallelGroup) -> None:
        super().__init__()
        self.decoder = OPTDecoder(s, tp)


class OPTForCausalLM(TextDecoderLM):
    """OPT decoder + lm_head (tied to the token embedding unless the config says otherwise).

    Implements the engine's model interface (models/interface.py `EngineModel`).
    """

    def __init__(self, settings: OPTSettings, tp: TensorParallelGroup | None = None) -> None:
        super().__init__()
        self.settings = settings
        tp = tp or TensorParallelGroup()
        self.model = OPTModel(settings, tp)
        self.lm_head = ParallelLMHead(settings.word_embed_proj_dim, settings.vocab_size, tp)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the embedding with the lm_head when the config says so (again after
        `to_empty`, which materialises each module's parameters separately)."""
        if self.settings.tie_word_embeddings:
            self.lm_head.weight = self.model.decoder.embed_tokens.weight

    @classmethod
    def from_hf_config(
        cls,
        config: dict[str, Any],
        architecture: str,
        max_model_len: int | None = None,
        tp: TensorParallelGroup | None = None,
    ) -> OPTForCausalLM:
        """`tp`: this rank's tensor-parallel group (None: the whole model on one device)."""
        return cls(OPTSettings.from_hf(config, max_model_len), tp)

    @property
    def forward_context(self) -> ForwardContext:
        return self.model.decoder.forward_context

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [num_tokens] -> [num_tokens, hidden]: the token embeddings, through
        `project_in` when the model has one (positions are added inside `forward`)."""
        return self.model.decoder.embed(input_ids)

    def decode(self, inputs_embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The final hidden states [num_tokens, hidden], before `project_out`."""
        return self.model.decoder(inputs_embeds, positions)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[rows, hidden] -> float32 logits [rows, vocab]."""
        project_out = self.model.decoder.project_out
        if project_out is not None:
            hidden = project_out(hidden)  # [rows, word_embed_proj_dim]
        return self.lm_head(hidden).float()

    def attention_layers(self) -> list[PagedAttention]:
        return [layer.self_attn.attn for layer in self.model.decoder.layers]

    def rotary_embeddings(self) -> list[RotaryEmbedding]:
        return []  # learned absolute positions: nothing to rebuild

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Copy checkpoint tensors into the parameters; returns the names loaded.

        Names arrive mapped by the registry's `WeightNaming` (`model.decoder...`, `lm_head`);
        q/k/v_proj are fused into qkv_proj here. Each tensor is converted while copied.
        """
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            if name == "lm_head.weight" and self.settings.tie_word_embeddings:
                continue  # the embedding is the head
            if name.startswith(_FINAL_NORM) and not self.settings.final_layer_norm:
                # A post-LN or `_remove_final_layer_norm` config builds no final LayerNorm;
                # transformers ignores such a tensor in the checkpoint, and so do we.
                continue
            fused = _fused_target(name)
            if fused is not None:
                target, shard = fused
                param = checkpoint_param(params, target, name)
                module = self.get_submodule(target.rsplit(".", 1)[0])
                assert isinstance(module, MergedLinear)
                module.load_shard(param, shard, tensor)
                loaded.add(f"{target}:{shard}")
                continue
            param = checkpoint_param(params, name)
            module = self.get_submodule(name.rsplit(".", 1)[0])
            if isinstance(module, MergedLinear):  # fc1: this rank's rows
                module.load_shard(param, "fc1", tensor)
            elif hasattr(module, "load_checkpoint"):  # a tensor-parallel layer: its slice
                module.load_checkpoint(param, tensor)
            else:
                copy_checkpoint_tensor(param, name, tensor)
            loaded.add(name)
        return loaded

    def expected_weights(self) -> set[str]:
        """Names `load_weights` reports once a complete checkpoint has been read."""
        expected: set[str] = set()
        for name, _ in self.named_parameters():
            if ".self_attn.qkv_proj." in name:
                expected.update(f"{name}:{shard}" for shard in ("q", "k", "v"))
            else:
                expected.add(name)
        return expected


_FINAL_NORM = "model.decoder.final_layer_norm."


def _fused_target(name: str) -> tuple[str, str] | None:
    """(qkv_proj parameter, shard) for a checkpoint q/k/v_proj tensor, else None."""
    for shard in ("q", "k", "v"):
        fragment = f".self_attn.{shard}_proj."
        if fragment in name:
            return name.replace(fragment, ".self_attn.qkv_proj."), shard
    return None
