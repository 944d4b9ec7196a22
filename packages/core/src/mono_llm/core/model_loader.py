"""Builds a model from an HF-format folder and fills its weights on the target device.

The module tree is constructed on the meta device (no memory, no random init) and then
materialised directly on the target device in the target dtype; checkpoint tensors are
streamed one at a time from (possibly sharded) safetensors files and converted while copied,
so peak memory is the model plus one tensor. `load_format="dummy"` fills seeded random values
instead, for benchmarks without a checkpoint.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from mono_llm.core.config import ModelConfig
from mono_llm.core.errors import UnsupportedModelError
from mono_llm.core.models.registry import resolve_model_class

logger = logging.getLogger(__name__)

# Dummy weights are drawn from U(-r, r): small enough that activations stay finite in bf16
# through 32+ layers, large enough that logits are not all equal.
_DUMMY_RANGE = 0.02


def build_model(model_config: ModelConfig, device: torch.device) -> nn.Module:
    """The model for `model_config` on `device` in `model_config.dtype`, weights loaded."""
    cls, arch = resolve_model_class(model_config.architectures)
    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(model_config.dtype)
    try:
        with torch.device("meta"):
            model = cls.from_hf_config(model_config.text_config, arch, model_config.max_model_len)
    finally:
        torch.set_default_dtype(previous_dtype)
    model = model.to_empty(device=device)
    model.tie_weights()
    for rotary in model.rotary_embeddings():
        rotary.build_cache(device)
    if model_config.load_format == "dummy":
        fill_dummy_weights(model, model_config.seed)
    else:
        load_safetensors(model, Path(model_config.model), device)
    model.requires_grad_(False)
    return model.eval()


def fill_dummy_weights(model: nn.Module, seed: int) -> None:
    """Seeded uniform random weights of the right shapes (same seed, same weights)."""
    for _, param in model.named_parameters():
        generator = torch.Generator(device=param.device).manual_seed(seed)
        param.data.uniform_(-_DUMMY_RANGE, _DUMMY_RANGE, generator=generator)
        seed += 1


def safetensors_files(model_dir: Path) -> list[Path]:
    """The checkpoint's files: those the index names when sharded, else every *.safetensors."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        files = sorted({model_dir / name for name in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise UnsupportedModelError(
                f"{index} names shards that are not in the folder: {', '.join(missing)}"
            )
        return files
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise UnsupportedModelError(
            f"{model_dir} has no *.safetensors files (only safetensors checkpoints are loaded; "
            "use load_format='dummy' for random weights)."
        )
    return files


def iter_safetensors(files: list[Path], device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of `files`, read straight onto `device` one at a time."""
    target = str(device) if device.type == "cuda" else "cpu"
    for path in files:
        with safe_open(str(path), framework="pt", device=target) as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                yield name, handle.get_tensor(name)


def load_safetensors(model: nn.Module, model_dir: Path, device: torch.device) -> None:
    files = safetensors_files(model_dir)
    loaded = model.load_weights(iter_safetensors(files, device))
    missing = model.expected_weights() - loaded
    if missing:
        shown = ", ".join(sorted(missing)[:8])
        raise UnsupportedModelError(
            f"checkpoint in {model_dir} lacks {len(missing)} weights the model needs: {shown}"
        )
    logger.info("loaded %d tensors from %d safetensors file(s)", len(loaded), len(files))
