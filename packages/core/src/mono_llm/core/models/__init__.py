"""Model implementations, the registry of `ModelSpec`s and the interface every model follows."""

from mono_llm.core.models.registry import (
    ModelKind,
    ModelSpec,
    WeightNaming,
    find_spec,
    register_model,
    resolve_model_class,
    resolve_spec,
    supported_architectures,
)

__all__ = [
    "ModelKind",
    "ModelSpec",
    "WeightNaming",
    "find_spec",
    "register_model",
    "resolve_model_class",
    "resolve_spec",
    "supported_architectures",
]
