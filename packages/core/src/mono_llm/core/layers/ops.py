"""The kernel ops the models call, each either the mono_llm.kernels op or its torch reference.

`mono_llm.kernels` already picks Triton on CUDA tensors and the reference on CPU tensors. Setting
`MONO_LLM_TORCH_OPS=paged_attention,rms_norm,...` (or `all`) sends the named ops to their plain
torch references on every device: a per-op escape hatch should a Triton kernel misbehave on
some GPU, without touching the rest. The references of the attention ops synchronise with the
host, so the runner disables CUDA graphs when either of them is redirected.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from mono_llm import kernels

logger = logging.getLogger(__name__)

OP_NAMES = (
    "rms_norm",
    "fused_add_rms_norm",
    "apply_rotary_embedding",
    "silu_and_mul",
    "gelu_and_mul",
    "write_kv_cache",
    "paged_attention",
    "paged_decode_attention",
)
HOST_SYNCING_REFERENCES = frozenset({"paged_attention", "paged_decode_attention"})


def torch_ops_requested() -> frozenset[str]:
    raw = os.environ.get("MONO_LLM_TORCH_OPS", "")
    names = {n.strip() for n in raw.split(",") if n.strip()}
    if "all" in names:
        return frozenset(OP_NAMES)
    unknown = names - set(OP_NAMES)
    if unknown:
        raise ValueError(f"MONO_LLM_TORCH_OPS names unknown ops {sorted(unknown)}; ops: {OP_NAMES}")
    return frozenset(names)


def _reference(name: str) -> Callable[..., Any]:
    """The torch reference of `name`, accepting (and ignoring) the kernels' sizing hints."""
    reference = getattr(kernels.reference, name)
    if name not in HOST_SYNCING_REFERENCES:
        return reference

    def call(*args: Any, max_query_len: Any = None, max_seq_len: Any = None,
             num_splits: Any = None, **kwargs: Any) -> Any:  # fmt: skip
        return reference(*args, **kwargs)

    return call


def _resolve() -> SimpleNamespace:
    redirected = torch_ops_requested()
    if redirected:
        logger.warning("running %s through the torch references", ", ".join(sorted(redirected)))
    return SimpleNamespace(
        **{
            name: _reference(name) if name in redirected else getattr(kernels, name)
            for name in OP_NAMES
        },
        rope_cos_sin_cache=kernels.rope_cos_sin_cache,
    )


ops = _resolve()
