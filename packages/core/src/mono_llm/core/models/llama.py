"""The Llama family in one config-driven implementation.

LlamaForCausalLM (Llama 2, 3, 3.1+ with llama3 / linear / yarn rope scaling), MistralForCausalLM,
Qwen2ForCausalLM (bias on q/k/v), Qwen3ForCausalLM (RMSNorm over each q/k head),
Phi3ForCausalLM (Phi-3, Phi-3.5-mini, Phi-4-mini: LongRoPE, partial rotary), GemmaForCausalLM
(RMSNorm scaling by 1 + weight, embeddings scaled by sqrt(hidden), GELU-tanh MLP, tied head),
Gemma2ForCausalLM (Gemma plus norms after attention and around the MLP, soft-capped
attention scores and logits, sliding-window attention on alternate layers),
Gemma3ForCausalLM (Gemma 2's layout without the caps, RMSNorm over each q/k head, five sliding
layers to one full, each kind with its own rotary base), GraniteForCausalLM
(IBM Granite 3: multipliers on the embeddings, on each sub-block's output and on the attention
scores, logits divided by a constant) and Olmo2ForCausalLM (norms after attention and after the
MLP instead of before them, RMSNorm over the whole q and k projections) differ only in a few
switches read from config.json, so they share this file. Module and parameter names follow the
HF ones (`model.layers.N.self_attn...`) except for the fused `qkv_proj` and `gate_up_proj`,
which `load_weights` assembles from the checkpoint's separate tensors, or splits from the
already fused tensors Phi-3 checkpoints store under those very names.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from mono_llm.core.distributed.group import TensorParallelGroup
from mono_llm.core.errors import UnsupportedModelError
from mono_llm.core.layers.attention import ForwardContext, PagedAttention
from mono_llm.core.layers.linear import MergedLinear
from mono_llm.core.layers.norm import RMSNorm
from mono_llm.core.layers.ops import ops
from mono_llm.core.layers.parallel import (
    ParallelLMHead,
    RowParallelLinear,
    VocabParallelEmbedding,
    attention_head_split,
    divide,
)
from mono_llm.core.layers.rotary import RotaryEmbedding
from mono_llm.core.models.llama_settings import LlamaSettings
from mono_llm.core.models.weight_loading import checkpoint_param, copy_checkpoint_tensor


def _norm(s: LlamaSettings, size: int) -> RMSNorm:
    return RMSNorm(size, s.rms_norm_eps, unit_offset=s.norm_unit_offset)


def _round_to(value: float, dtype: torch.dtype) -> float:
    """`value` as the nearest number `dtype` can hold."""
    return float(torch.tensor(value, dtype=dtype))


class LlamaAttention(nn.Module):
    def __init__(
        self,
        s: LlamaSettings,
        rotary: RotaryEmbedding,
        context: ForwardContext,
        tp: TensorParallelGroup,
        window: int | None = None,
    ) -> None:
        super().__init__()
        # This rank's heads (all of them without tensor parallelism).
        split = attention_head_split(s.num_heads, s.num_kv_heads, tp)
        self.num_heads, self.num_kv_heads, self.head_dim = split.heads, split.kv_heads, s.head_dim
        self.q_size = self.num_heads * s.head_dim
        self.kv_size = self.num_kv_heads * s.head_dim
        sources = None
        if tp.is_parallel:
            kv_start = split.first_kv_head * s.head_dim
            sources = {"q": split.first_head * s.head_dim, "k": kv_start, "v": kv_start}
        self.qkv_proj = MergedLinear(
            s.hidden_size,
            {"q": self.q_size, "k": self.kv_size, "v": self.kv_size},
            s.qkv_bias,
            sources,
        )
        self.o_proj = RowParallelLinear(s.num_heads * s.head_dim, s.hidden_size, s.o_bias, tp)
        # Qwen3: one norm per head; OLMo 2 (post_norms): over the whole projection, which a
        # rank cannot do with its heads alone (the spec refuses tensor parallelism).
        self.qk_norm_whole = s.post_norms
        if s.qk_norm:
            self.q_norm = _norm(s, self.q_size if s.post_norms else s.head_dim)
            self.k_norm = _norm(s, self.kv_size if s.post_norms else s.head_dim)
        self.qk_norm = s.qk_norm
        # Shared by every layer; kept out of the module tree so it is not registered N times.
        self._rotary = (rotary,)
        scale = s.attention_scale if s.attention_scale is not None else s.head_dim**-0.5
        self.attn = PagedAttention(
            self.num_heads,
            self.num_kv_heads,
            s.head_dim,
            scale,
            context,
            softcap=s.attn_softcap,
            sliding_window=window,
        )

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv_proj(hidden)  # [num_tokens, q_size + 2 * kv_size]
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        if self.qk_norm_whole:
            q, k = self.q_norm(q.contiguous()), self.k_norm(k.contiguous())
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if self.qk_norm and not self.qk_norm_whole:
            q = self.q_norm(q)
            k = self.k_norm(k)
        q, k = self._rotary[0](positions, q, k)
        out = self.attn(q, k, v)  # [num_tokens, num_heads, head_dim]
        return self.o_proj(out.reshape(-1, self.q_size))


class LlamaMLP(nn.Module):
    def __init__(self, s: LlamaSettings, tp: TensorParallelGroup | None = None) -> None:
        super().__init__()
        tp = tp or TensorParallelGroup()
        size = divide(s.intermediate_size, tp.size, "intermediate_size")
        start = tp.rank * size
        self.gate_up_proj = MergedLinear(
            s.hidden_size,
            {"gate": size, "up": size},
            s.mlp_bias,
            {"gate": start, "up": start} if tp.is_parallel else None,
        )
        self.down_proj = RowParallelLinear(s.intermediate_size, s.hidden_size, s.mlp_bias, tp)
        self.activation = s.activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)  # [num_tokens, 2 * intermediate / tp]
        if self.activation == "silu":
            return self.down_proj(ops.silu_and_mul(gate_up))
        approximate = "tanh" if self.activation == "gelu_tanh" else "none"
        return self.down_proj(ops.gelu_and_mul(gate_up, approximate))


class LlamaDecoderLayer(nn.Module):
    def __init__(
        self,
        s: LlamaSettings,
        rotary: RotaryEmbedding,
        context: ForwardContext,
        tp: TensorParallelGroup,
        window: int | None = None,
    ) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(s, rotary, context, tp, window)
        self.mlp = LlamaMLP(s, tp)
        if not s.post_norms:  # OLMo 2 normalises the sub-blocks' outputs only
            self.input_layernorm = _norm(s, s.hidden_size)
        # Llama: the norm before the MLP. Gemma 2 (sandwich): the norm of the attention output,
        # with pre_ and post_feedforward_layernorm around the MLP.
        self.post_attention_layernorm = _norm(s, s.hidden_size)
        self.sandwich = s.sandwich_norms
        if s.sandwich_norms:
            self.pre_feedforward_layernorm = _norm(s, s.hidden_size)
        if s.sandwich_norms or s.post_norms:
            self.post_feedforward_layernorm = _norm(s, s.hidden_size)
        self.post_norms = s.post_norms
        self.residual_multiplier = s.residual_multiplier

    def forward(
        self, positions: torch.Tensor, hidden: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The residual add of each sub-block is fused into the following norm.
        if self.post_norms:
            # OLMo 2: x + norm(attn(x)), then + norm(mlp(.)); the last add is left pending.
            if residual is not None:
                hidden = hidden + residual
            residual = hidden + self.post_attention_layernorm(self.self_attn(positions, hidden))
            return self.post_feedforward_layernorm(self.mlp(residual)), residual
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden)
        scale = self.residual_multiplier  # Granite: before the add, so outside the fused norm
        if scale is not None:
            hidden = hidden * scale
        if self.sandwich:
            hidden = self.post_attention_layernorm(hidden)
            hidden, residual = self.pre_feedforward_layernorm(hidden, residual)
            return self.post_feedforward_layernorm(self.mlp(hidden)), residual
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        out = self.mlp(hidden)
        return (out if scale is None else out * scale), residual


class LlamaModel(nn.Module):
    def __init__(self, s: LlamaSettings, tp: TensorParallelGroup | None = None) -> None:
        super().__init__()
        tp = tp or TensorParallelGroup()
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
        rotaries = [self.rotary_emb] * s.num_layers
        self.rotary_emb_local: RotaryEmbedding | None = None
        if s.local_rope_theta is not None:
            # Gemma 3: a second table for the sliding layers, built by the loader beside the
            # first (`rotary_embeddings`); each layer keeps a reference to its own.
            self.rotary_emb_local = RotaryEmbedding(
                s.head_dim,
                s.max_position,
                s.local_rope_theta,
                s.local_rope_scaling,
                rotary_dim=s.rotary_dim,
                context_len=s.context_len,
            )
            rotaries = [
                self.rotary_emb_local if is_sliding else self.rotary_emb
                for is_sliding in s.sliding_layers
            ]
        self.embed_tokens = VocabParallelEmbedding(s.vocab_size, s.hidden_size, tp)
        windows = s.layer_windows or (None,) * s.num_layers
        self.layers = nn.ModuleList(
            [
                LlamaDecoderLayer(s, rotaries[i], self.forward_context, tp, windows[i])
                for i in range(s.num_layers)
            ]
        )
        self.norm = _norm(s, s.hidden_size)
        self.embed_scale = s.embed_scale
        self.embedding_multiplier = s.embedding_multiplier

    def rotary_embeddings(self) -> list[RotaryEmbedding]:
        """Every rotary table the layers read (two for Gemma 3)."""
        if self.rotary_emb_local is None:
            return [self.rotary_emb]
        return [self.rotary_emb, self.rotary_emb_local]

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [num_tokens] -> the first layer's input [num_tokens, hidden]."""
        hidden = self.embed_tokens(input_ids)
        if self.embed_scale is not None:
            # As the reference: the factor is rounded to the model dtype first (sqrt(3072) is
            # 55.43 in float32 but 55.5 in bfloat16). Rounding a host scalar costs no sync.
            hidden = hidden * _round_to(self.embed_scale, hidden.dtype)
        if self.embedding_multiplier is not None:  # Granite: the float factor as it is
            hidden = hidden * self.embedding_multiplier
        return hidden

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if inputs_embeds is None:
            assert input_ids is not None
            hidden = self.embed(input_ids)  # [num_tokens, hidden]
        else:
            hidden = inputs_embeds  # [num_tokens, hidden]
        residual = None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual)
        hidden, _ = self.norm(hidden, residual)
        return hidden


# checkpoint name fragment -> (fused parameter fragment, shard)
_FUSED_SHARDS = {
    ".q_proj.": (".qkv_proj.", "q"),
    ".k_proj.": (".qkv_proj.", "k"),
    ".v_proj.": (".qkv_proj.", "v"),
    ".gate_proj.": (".gate_up_proj.", "gate"),
    ".up_proj.": (".gate_up_proj.", "up"),
}
# Fused in the checkpoint already (Phi-3): split into the same shards, in this order.
_PACKED_SHARDS = {".qkv_proj.": ("q", "k", "v"), ".gate_up_proj.": ("gate", "up")}


class LlamaForCausalLM(nn.Module):
    """Decoder-only LM: `forward` gives final hidden states, `compute_logits` the vocab scores.

    Implements the engine's model interface (models/interface.py `EngineModel`).
    """

    def __init__(self, settings: LlamaSettings, tp: TensorParallelGroup | None = None) -> None:
        super().__init__()
        self.settings = settings
        tp = tp or TensorParallelGroup()
        self.model = LlamaModel(settings, tp)
        self.lm_head = ParallelLMHead(settings.hidden_size, settings.vocab_size, tp)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the embedding with the lm_head when the config says so (again after
        `to_empty`, which materialises each module's parameters separately)."""
        if self.settings.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @classmethod
    def from_hf_config(
        cls,
        config: dict[str, Any],
        architecture: str,
        max_model_len: int | None = None,
        tp: TensorParallelGroup | None = None,
    ) -> LlamaForCausalLM:
        """`tp`: this rank's tensor-parallel group (None: the whole model on one device)."""
        return cls(LlamaSettings.from_hf(config, architecture, max_model_len), tp)

    @property
    def forward_context(self) -> ForwardContext:
        return self.model.forward_context

    @property
    def vocab_size(self) -> int:
        return self.settings.vocab_size

    @property
    def hidden_size(self) -> int:
        return self.settings.hidden_size

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [num_tokens] -> the embeddings `forward` feeds its first layer (scaled,
        for Gemma and Granite, as the reference scales them)."""
        return self.model.embed(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids (or inputs_embeds [num_tokens, hidden]), positions [num_tokens] ->
        final hidden states [num_tokens, hidden]."""
        return self.model(input_ids, positions, inputs_embeds)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[rows, hidden] -> float32 logits [rows, vocab] (divided by logits_scaling for
        Granite, soft-capped at ±final_softcap through tanh for Gemma 2; Gemma 3 configs leave
        the cap out)."""
        logits = self.lm_head(hidden).float()
        if self.settings.logits_scaling is not None:
            logits = logits / self.settings.logits_scaling
        cap = self.settings.final_softcap
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def attention_layers(self) -> list[PagedAttention]:
        return [layer.self_attn.attn for layer in self.model.layers]

    def rotary_embeddings(self) -> list[RotaryEmbedding]:
        return self.model.rotary_embeddings()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Copy checkpoint tensors into the parameters; returns the names loaded.

        Names arrive mapped by the registry's `WeightNaming` (HF names of this module tree,
        rope buffers dropped); the separate q/k/v and gate/up tensors are fused here. Tensors
        may arrive on any device and in any dtype: each is converted while copied, so only
        one checkpoint tensor at a time exists outside the model.
        """
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            if name == "lm_head.weight" and self.settings.tie_word_embeddings:
                continue
            packed = next((f for f in _PACKED_SHARDS if f in name), None)
            if packed is not None:
                loaded.update(self._load_packed(params, name, tensor, _PACKED_SHARDS[packed]))
                continue
            for fragment, (fused, shard) in _FUSED_SHARDS.items():
                if fragment in name:
                    target = name.replace(fragment, fused)
                    param = checkpoint_param(params, target, name)
                    module = self.get_submodule(target.rsplit(".", 1)[0])
                    assert isinstance(module, MergedLinear)
                    module.load_shard(param, shard, tensor)
                    loaded.add(f"{target}:{shard}")
                    break
            else:
                param = checkpoint_param(params, name)
                module = self.get_submodule(name.rsplit(".", 1)[0])
                if hasattr(module, "load_checkpoint"):  # a tensor-parallel layer: its slice
                    module.load_checkpoint(param, tensor)
                else:
                    copy_checkpoint_tensor(param, name, tensor)
                loaded.add(name)
        return loaded

    def _load_packed(
        self,
        params: dict[str, nn.Parameter],
        name: str,
        tensor: torch.Tensor,
        shards: tuple[str, ...],
    ) -> set[str]:
        """A checkpoint tensor holding several shards end to end along dim 0 (Phi-3's
        `qkv_proj`: q, then k, then v; `gate_up_proj`: gate, then up): each shard is cut at
        the sizes of the whole model and loaded as if it were a separate tensor, so tensor
        parallelism takes each rank's rows of every shard the same way."""
        s = self.settings
        kv = s.num_kv_heads * s.head_dim
        full = {
            "q": s.num_heads * s.head_dim,
            "k": kv,
            "v": kv,
            "gate": s.intermediate_size,
            "up": s.intermediate_size,
        }
        sizes = [full[shard] for shard in shards]
        if tensor.shape[0] != sum(sizes):
            raise UnsupportedModelError(
                f"checkpoint tensor {name} has {tensor.shape[0]} rows; the config gives "
                f"{' + '.join(map(str, sizes))} ({', '.join(shards)})"
            )
        param = checkpoint_param(params, name)
        module = self.get_submodule(name.rsplit(".", 1)[0])
        assert isinstance(module, MergedLinear)
        for shard, part in zip(shards, tensor.split(sizes, dim=0), strict=True):
            module.load_shard(param, shard, part)
        return {f"{name}:{shard}" for shard in shards}

    def expected_weights(self) -> set[str]:
        """Names `load_weights` reports once a complete checkpoint has been read."""
        expected: set[str] = set()
        for name, module in self.named_modules():
            if isinstance(module, MergedLinear):
                for param_name, _ in module.named_parameters(recurse=False):
                    expected.update(f"{name}.{param_name}:{s}" for s in module.shard_offsets)
        fused = {n.rsplit(":", 1)[0] for n in expected}
        for name, _ in self.named_parameters():
            if name not in fused:
                expected.add(name)
        return expected
