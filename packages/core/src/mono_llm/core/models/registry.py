"""HF architecture name (config.json `architectures`) -> the class that implements it.

Entries name a module and class so importing the registry stays cheap; another model family
(e.g. BERT for pooling) adds one line here.
"""

from __future__ import annotations

import importlib

from mono_llm.core.errors import UnsupportedModelError

# architecture -> (module under mono_llm.core.models, class name)
_MODELS: dict[str, tuple[str, str]] = {
    "LlamaForCausalLM": ("llama", "LlamaForCausalLM"),
    "MistralForCausalLM": ("llama", "LlamaForCausalLM"),
    "Qwen2ForCausalLM": ("llama", "LlamaForCausalLM"),
    "Qwen3ForCausalLM": ("llama", "LlamaForCausalLM"),
    # Pooling models (issue 6): BERT-style encoders, decoder classifiers and bare decoders.
    "BertModel": ("bert", "BertModel"),
    "RobertaModel": ("bert", "BertModel"),
    "XLMRobertaModel": ("bert", "BertModel"),
    "BertForSequenceClassification": ("bert", "BertForSequenceClassification"),
    "RobertaForSequenceClassification": ("bert", "BertForSequenceClassification"),
    "XLMRobertaForSequenceClassification": ("bert", "BertForSequenceClassification"),
    "LlamaForSequenceClassification": ("llama_pooling", "LlamaForSequenceClassification"),
    "MistralForSequenceClassification": ("llama_pooling", "LlamaForSequenceClassification"),
    "Qwen2ForSequenceClassification": ("llama_pooling", "LlamaForSequenceClassification"),
    "Qwen3ForSequenceClassification": ("llama_pooling", "LlamaForSequenceClassification"),
    "LlamaModel": ("llama_pooling", "LlamaBareModel"),
    "MistralModel": ("llama_pooling", "LlamaBareModel"),
    "Qwen2Model": ("llama_pooling", "LlamaBareModel"),
    "Qwen3Model": ("llama_pooling", "LlamaBareModel"),
}


def register_model(architecture: str, module: str, class_name: str) -> None:
    """Map `architecture` to `mono_llm.core.models.<module>.<class_name>`."""
    _MODELS[architecture] = (module, class_name)


def supported_architectures() -> list[str]:
    return sorted(_MODELS)


def resolve_model_class(architectures: list[str]) -> tuple[type, str]:
    """(implementing class, the architecture it was chosen for): the first supported entry."""
    for arch in architectures:
        if arch in _MODELS:
            module, class_name = _MODELS[arch]
            cls = getattr(importlib.import_module(f"mono_llm.core.models.{module}"), class_name)
            return cls, arch
    named = ", ".join(architectures) if architectures else "(none in config.json)"
    raise UnsupportedModelError(
        f"Model architecture {named} is not supported. Supported architectures: "
        f"{', '.join(supported_architectures())}."
    )
