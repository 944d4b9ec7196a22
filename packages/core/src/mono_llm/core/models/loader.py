"""Builds a model from an HF-format folder and fills its weights on the target device.

The module tree is constructed on the meta device (no memory, no random init) and then
materialised directly on the target device in the target dtype; checkpoint tensors are
streamed one at a time from (possibly sharded) safetensors files (or PyTorch `.bin` pickles) and converted while copied,
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
from mono_llm.core.distributed.group import TensorParallelGroup
from mono_llm.core.errors import UnsupportedModelError
from mono_llm.core.models.registry import WeightNaming, resolve_spec

logger = logging.getLogger(__name__)

# Dummy weights are drawn from U(-r, r): small enough that activations stay finite in bf16
# through 32+ layers, large enough that logits are not all equal.
_DUMMY_RANGE = 0.02


def build_model(
    model_config: ModelConfig, device: torch.device, tp: TensorParallelGroup | None = None
) -> nn.Module:
    """The model for `model_config` on `device` in `model_config.dtype`, weights loaded;
    with a tensor-parallel group `tp`, this rank's slice of it.

    What to build and how to read its checkpoint comes from the architecture's `ModelSpec`.
    """
    spec = resolve_spec(model_config.architectures)
    cls = spec.load_class()
    hf_config = model_config.text_config if spec.config_view == "text" else model_config.hf_config
    if "classifier_from_token" in hf_config:
        hf_config = {**hf_config, "classifier_token_ids": classifier_token_ids(model_config)}
    parallel = tp is not None and tp.is_parallel

    def on_meta(tp: TensorParallelGroup | None) -> nn.Module:
        previous_dtype = torch.get_default_dtype()
        torch.set_default_dtype(model_config.dtype)
        try:
            with torch.device("meta"):
                extra = {"tp": tp} if tp is not None else {}
                return cls.from_hf_config(
                    hf_config, spec.settings_architecture, model_config.max_model_len, **extra
                )
        finally:
            torch.set_default_dtype(previous_dtype)

    model = on_meta(tp if parallel else None).to_empty(device=device)
    model.tie_weights()
    for rotary in model.rotary_embeddings():
        rotary.build_cache(device)
    if model_config.load_format == "dummy" and parallel:
        # This rank's slices of the very weights one device would draw, so that TP=N and
        # TP=1 benchmarks and checks run the same model.
        fill_dummy_weights_sharded(model, on_meta(None), model_config.seed)
    elif model_config.load_format == "dummy":
        fill_dummy_weights(model, model_config.seed)
    else:
        load_safetensors(
            model, Path(model_config.model), device, model_config.load_format, spec.weights
        )
    model.requires_grad_(False)
    return model.eval()


def classifier_token_ids(model_config: ModelConfig) -> list[int]:
    """The vocabulary ids of `classifier_from_token`, read with the model's tokenizer."""
    from mono_llm.core.pooling.tasks import classifier_tokens
    from mono_llm.core.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(model_config)
    ids = []
    for token in classifier_tokens(model_config.hf_config):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if not isinstance(token_id, int) or token_id == tokenizer.unk_token_id:
            raise UnsupportedModelError(
                f"classifier_from_token names {token!r}, which is not one token of the "
                "model's vocabulary."
            )
        ids.append(token_id)
    return ids


def fill_dummy_weights(model: nn.Module, seed: int) -> None:
    """Seeded uniform random weights of the right shapes (same seed, same weights)."""
    for _, param in model.named_parameters():
        generator = torch.Generator(device=param.device).manual_seed(seed)
        param.data.uniform_(-_DUMMY_RANGE, _DUMMY_RANGE, generator=generator)
        seed += 1


def fill_dummy_weights_sharded(model: nn.Module, whole: nn.Module, seed: int) -> None:
    """`fill_dummy_weights` of the unsplit model `whole` (on the meta device: shapes only),
    each tensor drawn whole on this rank's device and cut to the rank's slice, one at a time."""
    from mono_llm.core.layers.linear import MergedLinear

    local = dict(model.named_parameters())
    for name, full in whole.named_parameters():
        param = local[name]
        tensor = torch.empty(full.shape, dtype=param.dtype, device=param.device)
        generator = torch.Generator(device=param.device).manual_seed(seed)
        tensor.uniform_(-_DUMMY_RANGE, _DUMMY_RANGE, generator=generator)
        seed += 1
        module_name = name.rsplit(".", 1)[0]
        module = model.get_submodule(module_name)
        if isinstance(module, MergedLinear) and module.source_offsets:
            whole_offsets = whole.get_submodule(module_name).shard_offsets
            for shard, (offset, size) in whole_offsets.items():
                module.load_shard(param, shard, tensor.narrow(0, offset, size))
        elif hasattr(module, "load_checkpoint"):
            module.load_checkpoint(param, tensor)
        else:  # replicated (norms)
            param.data.copy_(tensor)
        del tensor


def safetensors_files(model_dir: Path) -> list[Path]:
    """The checkpoint's files: those the index names when sharded, else every *.safetensors."""
    files = _indexed_files(model_dir, "model.safetensors.index.json")
    if files is None:
        files = sorted(model_dir.glob("*.safetensors"))
        # Mistral repositories also ship their native-format `consolidated.safetensors`
        # (other tensor names) beside the HF weights: the HF files are the ones to read.
        hf_files = [f for f in files if not f.name.startswith("consolidated")]
        if hf_files:
            files = hf_files
    return files


def pytorch_bin_files(model_dir: Path) -> list[Path]:
    """PyTorch pickle shards (`pytorch_model.bin`, `pytorch_model-0000N-of-0000M.bin`), which
    older checkpoints ship instead of safetensors; training leftovers are not weights."""
    files = _indexed_files(model_dir, "pytorch_model.bin.index.json")
    if files is None:
        files = sorted(f for f in model_dir.glob("*.bin") if f.name not in _NOT_WEIGHTS)
    return files


# Pickles that trainers leave beside the weights (vLLM skips the same ones).
_NOT_WEIGHTS = frozenset({"training_args.bin", "optimizer.bin", "scheduler.bin", "scaler.bin"})


def _indexed_files(model_dir: Path, index_name: str) -> list[Path] | None:
    index = model_dir / index_name
    if not index.is_file():
        return None
    weight_map = json.loads(index.read_text()).get("weight_map", {})
    files = sorted({model_dir / name for name in weight_map.values()})
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise UnsupportedModelError(
            f"{index} names shards that are not in the folder: {', '.join(missing)}"
        )
    return files


def iter_safetensors(files: list[Path], device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of `files`, read straight onto `device` one at a time."""
    target = str(device) if device.type == "cuda" else "cpu"
    for path in files:
        with safe_open(str(path), framework="pt", device=target) as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                yield name, handle.get_tensor(name)


def iter_pytorch_bin(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) from PyTorch pickles, loaded with `weights_only=True` (tensors and plain
    containers only: a pickle that would run code is refused) and memory-mapped, so a shard
    is paged in tensor by tensor as the model copies it."""
    for path in files:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:
            raise UnsupportedModelError(
                f"could not read {path} as PyTorch weights (loaded with weights_only=True, "
                f"so pickles holding code are refused): {exc}"
            ) from exc
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise UnsupportedModelError(f"{path} does not hold a state dict of tensors.")
        for name, tensor in state.items():
            if isinstance(tensor, torch.Tensor):
                yield name, tensor
        del state


def mapped_weights(
    weights: Iterator[tuple[str, torch.Tensor]], naming: WeightNaming
) -> Iterator[tuple[str, torch.Tensor]]:
    """(model-side name, tensor), skipping the tensors `naming` says the model does not use."""
    for name, tensor in weights:
        target = naming.map(name)
        if target is not None:
            yield target, tensor


def load_safetensors(
    model: nn.Module,
    model_dir: Path,
    device: torch.device,
    load_format: str = "auto",
    naming: WeightNaming | None = None,
) -> None:
    """Fill `model` from the folder's checkpoint: safetensors when present (preferred, as
    vLLM), else PyTorch `.bin` pickles; load_format "safetensors" / "pt" allows one kind.
    `naming` (the architecture's `ModelSpec.weights`) maps checkpoint names to parameters."""
    files = safetensors_files(model_dir) if load_format != "pt" else []
    if files:
        weights = iter_safetensors(files, device)
    else:
        files = pytorch_bin_files(model_dir) if load_format != "safetensors" else []
        if not files:
            raise UnsupportedModelError(
                f"{model_dir} has no weights that load_format={load_format!r} reads (it looks "
                "for *.safetensors, then pytorch_model*.bin; load_format='dummy' gives random "
                "weights)."
            )
        weights = iter_pytorch_bin(files)
    loaded = model.load_weights(mapped_weights(weights, naming or WeightNaming()))
    missing = model.expected_weights() - loaded
    if missing:
        shown = ", ".join(sorted(missing)[:8])
        raise UnsupportedModelError(
            f"checkpoint in {model_dir} lacks {len(missing)} weights the model needs: {shown}"
        )
    logger.info("loaded %d tensors from %d checkpoint file(s)", len(loaded), len(files))
