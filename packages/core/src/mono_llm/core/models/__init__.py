"""Model implementations and the registry that maps HF architecture names to them."""

from mono_llm.core.models.registry import (
    resolve_model_class,
    supported_architectures,
)

__all__ = ["resolve_model_class", "supported_architectures"]
