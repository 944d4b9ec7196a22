"""mono_llm.kernels: Triton kernels for LLM inference, each beside its plain-torch reference.

On CUDA tensors every op launches its Triton kernel; on CPU tensors it runs the reference
(``mono_llm.kernels.reference.<op>``). ``set_backend``/``use_backend`` force either one.
Importing this package needs neither CUDA nor triton.
"""

from mono_llm.kernels import reference
from mono_llm.kernels._version import __version__
from mono_llm.kernels.activation import gelu_and_mul, silu_and_mul
from mono_llm.kernels.attention import paged_attention
from mono_llm.kernels.backend import (
    HAS_TRITON,
    get_backend,
    set_backend,
    triton_can_run,
    use_backend,
)
from mono_llm.kernels.decode_attention import paged_decode_attention
from mono_llm.kernels.kv_cache import write_kv_cache
from mono_llm.kernels.norm import fused_add_rms_norm, rms_norm
from mono_llm.kernels.rotary import apply_rotary_embedding, rope_cos_sin_cache
from mono_llm.kernels.token_bitmask import apply_token_bitmask

# `mono_llm.kernels.rms_norm.reference(...)` etc.: each op carries its oracle, so a researcher can
# compare kernel and reference without knowing the module layout.
for _op in (
    apply_rotary_embedding, apply_token_bitmask, fused_add_rms_norm, gelu_and_mul,
    paged_attention, paged_decode_attention, rms_norm, silu_and_mul, write_kv_cache,
):  # fmt: skip
    _op.reference = getattr(reference, _op.__name__)  # type: ignore[attr-defined]
del _op

__all__ = [
    "HAS_TRITON",
    "__version__",
    "apply_rotary_embedding",
    "apply_token_bitmask",
    "fused_add_rms_norm",
    "gelu_and_mul",
    "get_backend",
    "paged_attention",
    "paged_decode_attention",
    "reference",
    "rms_norm",
    "rope_cos_sin_cache",
    "set_backend",
    "silu_and_mul",
    "triton_can_run",
    "use_backend",
    "write_kv_cache",
]
