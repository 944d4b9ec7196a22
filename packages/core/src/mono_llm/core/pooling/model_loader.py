"""Build and load the pooling model of a folder: encoder embedders/classifiers, decoder heads.

The registry maps an architecture to a class; this module picks the pooling variant of it
(an embedding pipeline or a classifier head) from the resolved `ModelTasks` and fills its
weights from the folder's safetensors files.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mono_llm.core.errors import UnsupportedModelError
from mono_llm.core.pooling.tasks import ENCODER_ARCHS, ModelTasks


def iterate_safetensors(model_dir: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of every top-level *.safetensors file in the folder."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise UnsupportedModelError(
            f"{model_dir} has no *.safetensors weights (pickled .bin checkpoints are not loaded)."
        )
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a Mapping
                yield name, handle.get_tensor(name)


def build_encoder_model(hf_config: dict[str, Any], tasks: ModelTasks) -> nn.Module:
    """An uninitialised BERT-style pooling model for the resolved runner."""
    from mono_llm.core.models.bert import BertEmbeddingModel, BertForSequenceClassification

    if not set(hf_config.get("architectures") or []) & ENCODER_ARCHS:
        raise UnsupportedModelError(f"{hf_config.get('architectures')} is not an encoder.")
    if tasks.runner == "embed":
        assert tasks.pooler_config is not None
        return BertEmbeddingModel(hf_config, tasks.pooler_config)
    if tasks.runner == "classify":
        return BertForSequenceClassification(hf_config, tasks.num_labels)
    raise UnsupportedModelError("encoder models cannot generate text.")


def load_encoder_model(
    model_dir: str | Path,
    hf_config: dict[str, Any],
    tasks: ModelTasks,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    load_format: str = "auto",
    seed: int = 0,
) -> nn.Module:
    """Build the encoder for `tasks` and load its weights (or random ones for load_format=dummy)."""
    torch.manual_seed(seed)
    model = build_encoder_model(hf_config, tasks)
    if load_format != "dummy":
        model.load_weights(iterate_safetensors(model_dir))
    return model.to(device=device, dtype=dtype).eval()
