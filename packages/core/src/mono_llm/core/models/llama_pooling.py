"""The Llama family as pooling models: sequence classifiers and bare decoder bodies.

`LlamaForSequenceClassification` (also Mistral / Qwen2 / Qwen3 ...ForSequenceClassification,
e.g. reward models and Qwen rerankers) is the decoder of models/llama.py with a `score`
projection instead of the LM head, read on each prompt's last token. `LlamaBareModel` serves
checkpoints published without an LM head (LlamaModel / MistralModel / Qwen2Model, e.g.
e5-mistral) for last-token embeddings; their tensor names lack the `model.` prefix, which
the registry's weight naming adds (and drops any LM head a checkpoint carries).

Both reuse the decoder body, fused-weight loading and KV-cache plumbing of
`LlamaForCausalLM`; only the head differs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from mono_llm.core.models.llama import LlamaForCausalLM, LlamaModel, LlamaSettings
from mono_llm.core.pooling.tasks import classifier_num_labels


class LlamaForSequenceClassification(LlamaForCausalLM):
    """Decoder + `score` linear (no bias) on the last token: class logits or one reward.

    A causal-LM checkpoint served as a classifier (`classifier_from_token`, e.g.
    Qwen3-Reranker) has no `score` tensor: its rows are the LM head's rows of those tokens
    (the embedding's when the head is tied), or with `is_original_qwen3_reranker` the one row
    yes - no, so a score is the LM's logit margin of "yes" over "no".
    """

    def __init__(
        self,
        settings: LlamaSettings,
        num_labels: int,
        token_ids: list[int] | None = None,
        token_margin: bool = False,
    ) -> None:
        nn.Module.__init__(self)  # not LlamaForCausalLM.__init__: there is no lm_head
        self.settings = settings
        self.num_labels = num_labels
        self.model = LlamaModel(settings)
        self.score = nn.Linear(settings.hidden_size, num_labels, bias=False)
        self.token_ids = token_ids or []
        self.token_margin = token_margin

    @classmethod
    def from_hf_config(
        cls, config: dict[str, Any], architecture: str, max_model_len: int | None = None
    ) -> LlamaForSequenceClassification:
        settings = LlamaSettings.from_hf(config, architecture, max_model_len)
        return cls(
            settings,
            classifier_num_labels(config),
            token_ids=config.get("classifier_token_ids"),
            token_margin=bool(config.get("is_original_qwen3_reranker")),
        )

    def tie_weights(self) -> None:
        pass

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """The checkpoint's `score`, or one built from the LM head's (or embedding's) rows of
        `token_ids`; an LM head is otherwise not part of a classifier."""
        head_rows: dict[str, torch.Tensor] = {}

        def body(stream: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in stream:
                if self.token_ids and name in ("lm_head.weight", "model.embed_tokens.weight"):
                    head_rows[name] = tensor[self.token_ids].float()
                if name != "lm_head.weight":
                    yield name, tensor

        loaded = super().load_weights(body(weights))
        if self.token_ids and "score.weight" not in loaded:
            rows = head_rows.get("lm_head.weight", head_rows.get("model.embed_tokens.weight"))
            if rows is not None:
                if self.token_margin:
                    rows = rows[1:2] - rows[0:1]
                self.score.weight.data.copy_(rows.to(self.score.weight.dtype))
                loaded.add("score.weight")
        return loaded

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Score logits of every row. Pooling never samples from them; the runner's memory
        profile calls this, and classifier logits are a small, harmless stand-in."""
        return self.classify(hidden)

    def classify(self, last_hidden: torch.Tensor) -> torch.Tensor:
        """[num_seqs, hidden] hidden state of each prompt's last token -> float32 logits."""
        return self.score(last_hidden).float()


class LlamaBareModel(LlamaForCausalLM):
    """Decoder body only (hidden states out), for checkpoints saved as LlamaModel & co."""

    def __init__(self, settings: LlamaSettings) -> None:
        nn.Module.__init__(self)
        self.settings = settings
        self.model = LlamaModel(settings)

    @classmethod
    def from_hf_config(
        cls, config: dict[str, Any], architecture: str, max_model_len: int | None = None
    ) -> LlamaBareModel:
        return cls(LlamaSettings.from_hf(config, architecture, max_model_len))

    def tie_weights(self) -> None:
        pass

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """No LM head: the hidden states themselves (only the runner's memory profile asks)."""
        return hidden.float()
