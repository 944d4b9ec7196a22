"""Start-up checks of a tensor/data-parallel configuration against the model and the machine,
run while the config is read so a bad size fails in one line before any worker starts."""

from __future__ import annotations

from typing import Any

import torch

from mono_llm.core.errors import ParallelConfigError
from mono_llm.core.models.registry import resolve_spec, tensor_parallel_architectures


def check_parallel_config(
    size: int,
    data_parallel_size: int,
    architectures: list[str],
    task: str,
    text_config: dict[str, Any],
    device: str,
) -> None:
    """Refuse, before any worker starts, a split the model or the machine cannot take:
    `size` is the tensor-parallel size, `text_config` the language model's config.json."""
    devices = size * data_parallel_size
    if device == "cuda" and devices > torch.cuda.device_count():
        raise ParallelConfigError(
            f"--tensor-parallel-size {size} x --data-parallel-size "
            f"{data_parallel_size} needs {devices} GPUs; "
            f"{torch.cuda.device_count()} are visible.",
            param="tensor_parallel_size",
        )
    if size == 1:
        return
    spec = resolve_spec(architectures)
    if not spec.tensor_parallel or task not in ("auto", "generate"):
        supported = tensor_parallel_architectures()
        raise ParallelConfigError(
            f"--tensor-parallel-size {size}: tensor parallelism runs text generation with "
            f"{', '.join(supported)}; this model is {spec.architecture} (task {task}).",
            param="tensor_parallel_size",
        )
    text = text_config
    heads = int(text["num_attention_heads"])
    kv_heads = int(text.get("num_key_value_heads") or heads)
    # The MLP width: `intermediate_size` (Llama family) or `ffn_dim` (OPT).
    mlp_key = "intermediate_size" if "intermediate_size" in text else "ffn_dim"
    checks = (
        ("num_attention_heads", heads, heads % size == 0),
        (
            "num_key_value_heads",
            kv_heads,
            kv_heads % size == 0 if kv_heads >= size else size % kv_heads == 0,
        ),
        (mlp_key, int(text[mlp_key]), int(text[mlp_key]) % size == 0),
        ("vocab_size", int(text["vocab_size"]), text["vocab_size"] % size == 0),
    )
    for name, value, ok in checks:
        if not ok:
            raise ParallelConfigError(
                f"--tensor-parallel-size {size} does not divide the model's {name} ({value}); "
                "choose a size that divides it.",
                param="tensor_parallel_size",
            )
