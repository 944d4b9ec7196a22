"""Pool a ragged batch of token hidden states into one vector per sequence.

The batch layout is the engine's: every sequence's tokens concatenated, no padding
(`hidden` is [num_tokens, hidden]) and host-side `seq_lens`. Pooling is computed in float32
whatever the model dtype, so a bf16 model's mean over 512 tokens loses nothing to rounding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mono_llm.core.pooling.config import DenseLayerConfig, PoolerConfig
from mono_llm.core.pooling.tasks import ModelTasks
from mono_llm.core.pooling_params import PoolingParams


def pool_sequences(
    hidden: torch.Tensor, seq_lens: Sequence[int], pooling_type: str
) -> torch.Tensor:
    """[num_tokens, hidden] -> [num_seqs, hidden] (float32) by `pooling_type`."""
    lens = torch.tensor(list(seq_lens), device=hidden.device, dtype=torch.long)
    ends = torch.cumsum(lens, 0)  # [num_seqs]
    starts = ends - lens
    if pooling_type == "cls":
        return hidden.index_select(0, starts).float()  # exact: float32 holds every bf16/fp16
    if pooling_type == "last":
        return hidden.index_select(0, ends - 1).float()
    num_seqs = len(seq_lens)
    seq_ids = torch.repeat_interleave(torch.arange(num_seqs, device=hidden.device), lens)
    values = hidden.float()
    if pooling_type == "max":
        out = torch.full(
            (num_seqs, hidden.shape[1]), -math.inf, device=hidden.device, dtype=torch.float32
        )
        index = seq_ids.unsqueeze(1).expand_as(values)
        return out.scatter_reduce(0, index, values, reduce="amax", include_self=True)
    sums = torch.zeros((num_seqs, hidden.shape[1]), device=hidden.device, dtype=torch.float32)
    sums.index_add_(0, seq_ids, values)
    if pooling_type == "mean":
        return sums / lens.unsqueeze(1).float()
    if pooling_type == "mean_sqrt_len":
        return sums / lens.unsqueeze(1).float().sqrt()
    raise ValueError(f"unknown pooling type {pooling_type!r}")


_DENSE_ACTIVATIONS = {
    "identity": nn.Identity,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "relu": nn.ReLU,
}


class EmbeddingPooler(nn.Module):
    """Pooling plus the sentence-transformers Dense projections that follow it."""

    def __init__(self, config: PoolerConfig) -> None:
        super().__init__()
        self.config = config
        self.dense = nn.ModuleList(
            nn.Sequential(
                nn.Linear(layer.in_features, layer.out_features, bias=layer.bias),
                _DENSE_ACTIVATIONS[layer.activation](),
            )
            for layer in config.dense_layers
        )

    @property
    def output_size(self) -> int | None:
        return self.config.dense_layers[-1].out_features if self.config.dense_layers else None

    def load_dense_weights(self) -> None:
        """Read each Dense module's weights from its own folder (2_Dense/model.safetensors)."""
        from safetensors.torch import load_file

        for layer_cfg, module in zip(self.config.dense_layers, self.dense, strict=True):
            state = _load_dense_state(layer_cfg, load_file)
            linear = module[0]
            with torch.no_grad():
                linear.weight.copy_(state["linear.weight"])
                if linear.bias is not None:
                    linear.bias.copy_(state["linear.bias"])

    def forward(self, hidden: torch.Tensor, seq_lens: Sequence[int]) -> torch.Tensor:
        pooled = pool_sequences(hidden, seq_lens, self.config.pooling_type)
        for module in self.dense:
            pooled = module(pooled.to(module[0].weight.dtype)).float()
        return pooled  # [num_seqs, out_features] float32


def _load_dense_state(layer: DenseLayerConfig, load_file) -> dict[str, torch.Tensor]:
    weights = layer.path / "model.safetensors"
    if not weights.is_file():
        from mono_llm.core.errors import UnsupportedModelError

        raise UnsupportedModelError(
            f"{layer.path} has no model.safetensors; only safetensors Dense weights are read."
        )
    return load_file(str(weights))


def finalize_pooled(pooled: torch.Tensor, params: PoolingParams, tasks: ModelTasks) -> torch.Tensor:
    """Apply a request's own knobs (dimensions, normalize, activation) to its pooled row.

    `pooled` is one float32 vector: the embedding before normalization (embed runner) or the
    classifier logits (classify runner).
    """
    task = params.task or ("embed" if tasks.runner == "embed" else "classify")
    if tasks.runner == "embed":
        if params.dimensions is not None:
            pooled = pooled[..., : params.dimensions]
        default_normalize = (
            tasks.pooler_config.normalize if tasks.pooler_config is not None else True
        )
        normalize = params.normalize
        if normalize is None:
            # /pooling returns the raw pooled state unless normalization is asked for.
            normalize = default_normalize if task != "encode" else False
        if normalize:
            pooled = F.normalize(pooled, p=2, dim=-1)
        return pooled
    use_activation = params.use_activation
    if use_activation is None:
        use_activation = task != "encode"
    if not use_activation:
        return pooled
    if tasks.classifier_activation == "sigmoid":
        return torch.sigmoid(pooled)
    if tasks.classifier_activation == "softmax":
        return torch.softmax(pooled, dim=-1)
    return pooled


def check_pooling_params(
    params: PoolingParams, tasks: ModelTasks, hidden_size: int, *, model: str | None = None
) -> None:
    """Validate a request against the served model before it is queued."""
    task = params.task or ("classify" if tasks.runner == "classify" else "embed")
    tasks.check(task, model=model)  # UnsupportedTaskError naming what the model does support
    config = tasks.pooler_config
    params.verify(
        task,
        hidden_size=hidden_size,
        matryoshka=bool(config and config.is_matryoshka),
        matryoshka_dimensions=config.matryoshka_dimensions if config else None,
    )


class PoolingHead(nn.Module):
    """A model's token hidden states -> one float32 row per sequence, before request knobs.

    embed runner: the sentence-transformers pipeline (pooling + Dense layers).
    classify runner: the [CLS] (encoders) or last-token (decoders) hidden state through the
    model's own classifier (`model.classify`), giving logits.
    """

    def __init__(self, model: nn.Module, tasks: ModelTasks) -> None:
        super().__init__()
        if tasks.pooler_config is None:
            raise ValueError(f"the {tasks.runner!r} runner does not pool")
        self.tasks = tasks
        self.pooling_type = tasks.pooler_config.pooling_type
        self.embedder = EmbeddingPooler(tasks.pooler_config) if tasks.runner == "embed" else None
        if tasks.runner == "classify" and not hasattr(model, "classify"):
            raise ValueError(f"{type(model).__name__} has no classifier head")
        # A tuple keeps the model out of this module's parameters.
        self._model = (model,)

    @property
    def output_size(self) -> int:
        model = self._model[0]
        if self.embedder is not None:
            return self.embedder.output_size or int(model.hidden_size)
        return int(model.num_labels)

    def forward(self, hidden: torch.Tensor, seq_lens: Sequence[int]) -> torch.Tensor:
        if self.embedder is not None:
            return self.embedder(hidden, seq_lens)  # [num_seqs, size] float32
        rows = pool_sequences(hidden, seq_lens, self.pooling_type).to(hidden.dtype)
        return self._model[0].classify(rows)  # [num_seqs, num_labels] float32


def build_pooling_head(
    model: nn.Module, tasks: ModelTasks, device: torch.device | str, dtype: torch.dtype
) -> PoolingHead:
    """The PoolingHead for a loaded model, with its Dense weights read, on `device`."""
    head = PoolingHead(model, tasks)
    if head.embedder is not None:
        head.embedder.load_dense_weights()
    return head.to(device=device, dtype=dtype).eval()
