"""BERT-style encoders (BERT, RoBERTa, XLM-RoBERTa) for embeddings, classification and scoring.

Covers sentence-transformers/all-MiniLM-L6-v2 and BGE (BertModel + mean/CLS pooling),
BERT cross-encoders and classifiers (BertForSequenceClassification) and the RoBERTa /
XLM-RoBERTa variants (position ids offset past the padding index, a two-layer classifier
head) used by e.g. bge-m3 and bge-reranker. Module names mirror the HF checkpoints so weights
load by name.

Unlike the decoders, an encoder attends bidirectionally within each sequence and keeps no KV
cache: every prompt runs whole, in one forward pass. The engine's batch is ragged (all
sequences' tokens concatenated); attention scatters it into a padded [num_seqs, max_len]
layout once per layer and runs torch SDPA with a key-padding mask, which is exact and lets
SDPA pick its fused kernel on GPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mono_llm.core.errors import UnsupportedModelError
from mono_llm.core.layers.attention import ForwardContext
from mono_llm.core.pooling.tasks import classifier_num_labels

_ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


@dataclass(slots=True)
class EncoderAttentionMetadata:
    """How the ragged token batch maps onto a padded [num_seqs, max_len] layout.

    Built once per forward pass from host-side sequence lengths and shared by every layer.
    """

    seq_lens: list[int]
    max_len: int
    # For each token of the ragged batch, its row in the flattened padded layout.
    padded_index: torch.Tensor  # [num_tokens] int64
    # True where a key is a real token; None when all sequences have the same length.
    key_mask: torch.Tensor | None  # [num_seqs, 1, 1, max_len] bool

    @classmethod
    def build(cls, seq_lens: Sequence[int], device: torch.device) -> EncoderAttentionMetadata:
        lens = [int(n) for n in seq_lens]
        max_len = max(lens)
        lens_t = torch.tensor(lens, dtype=torch.long)
        offsets = torch.arange(len(lens), dtype=torch.long) * max_len
        starts = torch.cumsum(lens_t, 0) - lens_t
        token_seq = torch.repeat_interleave(torch.arange(len(lens)), lens_t)
        within = torch.arange(int(lens_t.sum())) - starts[token_seq]
        padded_index = (offsets[token_seq] + within).to(device)
        key_mask = None
        if min(lens) != max_len:
            key_mask = (torch.arange(max_len).unsqueeze(0) < lens_t.unsqueeze(1)).to(device)
            key_mask = key_mask[:, None, None, :]
        return cls(lens, max_len, padded_index, key_mask)

    @classmethod
    def from_query_start_loc(
        cls, query_start_loc: torch.Tensor, max_len: int, num_tokens: int
    ) -> EncoderAttentionMetadata:
        """Same, from the engine's device-side cumulative lengths, without a host sync."""
        device = query_start_loc.device
        starts = query_start_loc[:-1].long()
        lens = query_start_loc[1:].long() - starts  # [num_seqs]
        num_seqs = lens.shape[0]
        token_seq = torch.repeat_interleave(
            torch.arange(num_seqs, device=device), lens, output_size=num_tokens
        )
        within = torch.arange(num_tokens, device=device) - starts[token_seq]
        padded_index = token_seq * max_len + within
        key_mask = None
        if num_seqs > 1:  # lengths may differ; we cannot look without a sync
            key_mask = torch.arange(max_len, device=device).unsqueeze(0) < lens.unsqueeze(1)
            key_mask = key_mask[:, None, None, :]
        return cls([max_len] * num_seqs, max_len, padded_index, key_mask)


class BertEmbeddings(nn.Module):
    def __init__(self, config: dict[str, Any], position_offset: int) -> None:
        super().__init__()
        hidden = config["hidden_size"]
        self.word_embeddings = nn.Embedding(config["vocab_size"], hidden)
        self.position_embeddings = nn.Embedding(config["max_position_embeddings"], hidden)
        self.token_type_embeddings = nn.Embedding(
            max(int(config.get("type_vocab_size", 2)), 1), hidden
        )
        self.LayerNorm = nn.LayerNorm(hidden, eps=config.get("layer_norm_eps", 1e-12))
        # RoBERTa numbers positions from padding_idx + 1 (its position table has 2 extra rows).
        self.position_offset = position_offset

    def forward(
        self,
        input_ids: torch.Tensor | None,  # [num_tokens]
        positions: torch.Tensor,  # [num_tokens], 0-based within each sequence
        token_type_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None = None,  # [num_tokens, hidden]: word embeddings
    ) -> torch.Tensor:
        if inputs_embeds is None:
            assert input_ids is not None
            inputs_embeds = self.word_embeddings(input_ids)
        x = inputs_embeds + self.position_embeddings(positions + self.position_offset)
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.LayerNorm(x)  # [num_tokens, hidden]


class BertSelfAttention(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        hidden = config["hidden_size"]
        self.num_heads = config["num_attention_heads"]
        self.head_dim = hidden // self.num_heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, meta: EncoderAttentionMetadata) -> torch.Tensor:
        num_tokens = x.shape[0]
        num_seqs = len(meta.seq_lens)
        shape = (num_seqs, meta.max_len, self.num_heads, self.head_dim)

        def padded(t: torch.Tensor) -> torch.Tensor:  # [num_tokens, hidden] -> [B, heads, L, d]
            if meta.key_mask is None:
                return t.view(shape).transpose(1, 2)
            out = t.new_zeros((num_seqs * meta.max_len, t.shape[1]))
            out.index_copy_(0, meta.padded_index, t)
            return out.view(shape).transpose(1, 2)

        q, k, v = padded(self.query(x)), padded(self.key(x)), padded(self.value(x))
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=meta.key_mask)
        attn = attn.transpose(1, 2).reshape(num_seqs * meta.max_len, -1)
        if meta.key_mask is not None:
            attn = attn.index_select(0, meta.padded_index)
        return attn.view(num_tokens, -1)  # [num_tokens, hidden]


class BertSelfOutput(nn.Module):
    def __init__(self, config: dict[str, Any], in_size: int) -> None:
        super().__init__()
        hidden = config["hidden_size"]
        self.dense = nn.Linear(in_size, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=config.get("layer_norm_eps", 1e-12))

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config, config["hidden_size"])

    def forward(self, x: torch.Tensor, meta: EncoderAttentionMetadata) -> torch.Tensor:
        return self.output(self.self(x, meta), x)


class BertIntermediate(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.dense = nn.Linear(config["hidden_size"], config["intermediate_size"])
        act = config.get("hidden_act", "gelu")
        if act not in _ACTIVATIONS:
            raise UnsupportedModelError(f"BERT hidden_act {act!r} is not supported.")
        self.act = _ACTIVATIONS[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertSelfOutput(config, config["intermediate_size"])

    def forward(self, x: torch.Tensor, meta: EncoderAttentionMetadata) -> torch.Tensor:
        x = self.attention(x, meta)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config["num_hidden_layers"]))

    def forward(self, x: torch.Tensor, meta: EncoderAttentionMetadata) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, meta)
        return x


class BertPooler(nn.Module):
    """BERT's own pooler: dense + tanh on the [CLS] token (feeds sequence classifiers)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.dense = nn.Linear(config["hidden_size"], config["hidden_size"])

    def forward(self, cls_hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(cls_hidden))


def _is_roberta(config: dict[str, Any]) -> bool:
    return config.get("model_type") in ("roberta", "xlm-roberta") or any(
        "Roberta" in arch for arch in config.get("architectures") or []
    )


class BertModel(nn.Module):
    """The encoder body: embeddings + transformer layers -> token hidden states."""

    is_encoder = True

    def __init__(self, config: dict[str, Any], *, add_pooler: bool = False) -> None:
        super().__init__()
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise UnsupportedModelError(
                f"position_embedding_type {config['position_embedding_type']!r} is not "
                "supported; only absolute position embeddings are."
            )
        if config.get("is_decoder") or config.get("add_cross_attention"):
            raise UnsupportedModelError("BERT used as a decoder is not supported.")
        self.config = config
        # One per model instance: inside an engine step the runner installs the step's metadata.
        self.forward_context = ForwardContext()
        offset = int(config.get("pad_token_id") or 0) + 1 if _is_roberta(config) else 0
        self.embeddings = BertEmbeddings(config, offset)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooler else None

    @classmethod
    def from_hf_config(
        cls, config: dict[str, Any], architecture: str, max_model_len: int | None = None
    ) -> BertModel:
        return cls(config)

    @property
    def hidden_size(self) -> int:
        return int(self.config["hidden_size"])

    @property
    def vocab_size(self) -> int:
        return int(self.config["vocab_size"])

    @property
    def max_positions(self) -> int:
        """Longest sequence the position table allows (RoBERTa loses its offset rows)."""
        return int(self.config["max_position_embeddings"]) - self.embeddings.position_offset

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [num_tokens] -> word embeddings [num_tokens, hidden] (position and
        token-type embeddings are added inside `forward`, from inputs_embeds as from ids)."""
        return self.embeddings.word_embeddings(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,  # [num_tokens]
        positions: torch.Tensor,  # [num_tokens]
        seq_lens: Sequence[int] | None = None,
        token_type_ids: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,  # [num_tokens, hidden]
    ) -> torch.Tensor:
        """Token hidden states [num_tokens, hidden] of a ragged batch of whole sequences.

        Sequence boundaries come from `seq_lens` (host ints) or, inside an engine step, from
        the step's AttentionMetadata (every slice must be a whole prompt: no KV cache).
        """
        if seq_lens is not None:
            meta = EncoderAttentionMetadata.build(seq_lens, positions.device)
        else:
            step = self.forward_context.attention
            meta = EncoderAttentionMetadata.from_query_start_loc(
                step.query_start_loc, step.max_query_len, positions.shape[0]
            )
        x = self.embeddings(input_ids, positions, token_type_ids, inputs_embeds)
        return self.encoder(x, meta)  # [num_tokens, hidden]

    # The engine's model interface (models/interface.py): no KV cache, no rope, nothing tied.
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """No LM head: the hidden states themselves (pooling reads them, never samples)."""
        return hidden.float()

    def attention_layers(self) -> list[nn.Module]:
        return []

    def rotary_embeddings(self) -> list[nn.Module]:
        return []

    def tie_weights(self) -> None:
        pass

    def expected_weights(self) -> set[str]:
        return {name for name, _ in self.named_parameters()}

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Copy checkpoint tensors in by name; return the names of parameters loaded."""
        return _load_by_name(self, weights)


class BertForSequenceClassification(BertModel):
    """Encoder + classifier on [CLS]: class logits, or one relevance logit (cross-encoder).

    BERT: pooler (dense + tanh) then `classifier` linear. RoBERTa: `classifier.dense` +
    tanh then `classifier.out_proj`, with no BERT pooler.
    """

    is_encoder = True

    def __init__(self, config: dict[str, Any], num_labels: int | None = None) -> None:
        roberta_head = _is_roberta(config)
        super().__init__(config, add_pooler=not roberta_head)
        self.roberta_head = roberta_head
        hidden = config["hidden_size"]
        self.num_labels = num_labels or classifier_num_labels(config)
        if roberta_head:
            self.classifier = _RobertaClassificationHead(hidden, self.num_labels)
        else:
            self.classifier = nn.Linear(hidden, self.num_labels)

    @classmethod
    def from_hf_config(
        cls, config: dict[str, Any], architecture: str, max_model_len: int | None = None
    ) -> BertForSequenceClassification:
        return cls(config)

    def classify(self, cls_hidden: torch.Tensor) -> torch.Tensor:
        """[num_seqs, hidden] hidden states of each [CLS] token -> float32 logits [num_seqs, labels]."""
        if self.pooler is not None:
            cls_hidden = self.pooler(cls_hidden)
        return self.classifier(cls_hidden).float()


class _RobertaClassificationHead(nn.Module):
    def __init__(self, hidden: int, num_labels: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(torch.tanh(self.dense(x)))


def _load_by_name(module: nn.Module, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
    """Copy checkpoint tensors into `module`'s parameters, matching HF names.

    Names arrive mapped by the registry's `WeightNaming`: the `bert.` / `roberta.` wrapper
    stripped, masked-LM heads and HF buffers dropped, TF-era gamma/beta renamed. Every
    parameter must be found: a silently random layer would give plausible-looking but wrong
    vectors.
    """
    params = dict(module.named_parameters())
    loaded: set[str] = set()
    for name, tensor in weights:
        target = name
        param = params.get(target)
        if param is None:
            if name.startswith("pooler."):  # BertModel checkpoints carry an unused pooler
                continue
            raise UnsupportedModelError(f"unexpected tensor {name!r} in the checkpoint.")
        if tuple(param.shape) != tuple(tensor.shape):
            raise UnsupportedModelError(
                f"tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(param.shape)}."
            )
        with torch.no_grad():
            param.copy_(tensor.to(param.dtype))
        loaded.add(target)
    missing = sorted(set(params) - loaded)
    if missing:
        raise UnsupportedModelError(
            f"checkpoint is missing {len(missing)} tensors, e.g. {', '.join(missing[:4])}."
        )
    return loaded
