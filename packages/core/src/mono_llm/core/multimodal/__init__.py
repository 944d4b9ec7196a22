"""Multimodal inputs inside the engine: items with spans and hashes, and the encoder cache.

Media arrive preprocessed (pixel tensors); decoding and fetching live in the separate
`mono_llm.multimodal` package, which the engine never imports.
"""

from mono_llm.core.multimodal.encoder_cache import EncoderCache
from mono_llm.core.multimodal.inputs import MultiModalItem, expand_placeholders

__all__ = ["EncoderCache", "MultiModalItem", "expand_placeholders"]
