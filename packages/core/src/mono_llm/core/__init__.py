"""The mono-llm engine. Public names mirror vLLM's so scripts port by changing imports.

Names are imported lazily: `import mono_llm.core` stays cheap, and a name costs its
import only when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mono_llm.core._version import __version__

# public name -> module (relative to mono_llm.core) that defines it
_EXPORTS: dict[str, str] = {
    "EngineArgs": "config",
    "AsyncEngineArgs": "config",
    "EngineConfig": "config",
    "ModelConfig": "config",
    "CacheConfig": "config",
    "SchedulerConfig": "config",
    "SamplingParams": "sampling_params",
    "RequestOutputKind": "sampling_params",
    "StructuredOutputsParams": "sampling_params",
    "RequestOutput": "outputs",
    "CompletionOutput": "outputs",
    "Logprob": "outputs",
    "RequestMetrics": "outputs",
    "SchedulerStats": "outputs",
    "InvalidRequestError": "errors",
    "PromptTooLongError": "errors",
    "UnsupportedTaskError": "errors",
    "UnsupportedModelError": "errors",
    "EngineError": "errors",
    "EngineDeadError": "errors",
    "EngineOverloadedError": "errors",
    "LLM": "llm",
    "BeamSearchParams": "beam_search",
    "AsyncLLM": "async_llm",
    "PoolingParams": "pooling_params",
    "PoolingRequestOutput": "outputs",
    "EmbeddingRequestOutput": "outputs",
    "ClassificationRequestOutput": "outputs",
    "ScoringRequestOutput": "outputs",
    "PoolingOutput": "outputs",
    "EmbeddingOutput": "outputs",
    "ClassificationOutput": "outputs",
    "ScoringOutput": "outputs",
    "TokensPrompt": "inputs",
    "TextPrompt": "inputs",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mono_llm.core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"mono_llm.core.{module}"), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from mono_llm.core.config import AsyncEngineArgs, EngineArgs  # noqa: F401
    from mono_llm.core.outputs import CompletionOutput, RequestOutput  # noqa: F401
    from mono_llm.core.sampling_params import SamplingParams  # noqa: F401
