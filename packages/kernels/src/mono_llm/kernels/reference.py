"""Every op's plain-torch reference, under the op's public name.

These are what the ops run on CPU tensors and what the tests compare the Triton kernels with;
researchers can call them directly to check a kernel or to read what an op computes.
"""

from __future__ import annotations

from mono_llm.kernels.activation import reference_gelu_and_mul as gelu_and_mul
from mono_llm.kernels.activation import reference_silu_and_mul as silu_and_mul
from mono_llm.kernels.attention import reference as paged_attention
from mono_llm.kernels.decode_attention import reference as paged_decode_attention
from mono_llm.kernels.kv_cache import reference as write_kv_cache
from mono_llm.kernels.norm import reference_fused_add_rms_norm as fused_add_rms_norm
from mono_llm.kernels.norm import reference_rms_norm as rms_norm
from mono_llm.kernels.rotary import reference as apply_rotary_embedding
from mono_llm.kernels.token_bitmask import reference as apply_token_bitmask

__all__ = [
    "apply_rotary_embedding",
    "apply_token_bitmask",
    "fused_add_rms_norm",
    "gelu_and_mul",
    "paged_attention",
    "paged_decode_attention",
    "rms_norm",
    "silu_and_mul",
    "write_kv_cache",
]
