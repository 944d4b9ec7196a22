"""The model's generation_config.json: default sampling parameters and end-of-sequence ids.

As vLLM: with `generation_config="auto"` (the default) the sampling fields a checkpoint ships
become the defaults of requests that do not set them; with "vllm" they are ignored; any other
value names a folder holding a generation_config.json. EOS ids are always read from the model
folder, because a model that is not told when to stop never does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mono_llm.core.config import ModelConfig

# generation_config.json key -> SamplingParams field
_SAMPLING_KEYS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "max_new_tokens": "max_tokens",
}


def _read(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "generation_config.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def default_sampling_params(model_config: ModelConfig) -> dict[str, Any]:
    """SamplingParams defaults from the checkpoint ({} with generation_config="vllm")."""
    source = model_config.generation_config
    if source == "vllm":
        return {}
    data = _read(model_config.model if source == "auto" else source)
    return {field: data[key] for key, field in _SAMPLING_KEYS.items() if data.get(key) is not None}


def eos_token_ids(model_config: ModelConfig, tokenizer: Any | None = None) -> set[int]:
    """Every token id that ends generation: generation_config's, config.json's, the tokenizer's."""
    ids: set[int] = set()
    sources: list[Any] = [_read(model_config.model).get("eos_token_id")]
    if model_config.generation_config not in ("auto", "vllm"):
        sources.append(_read(model_config.generation_config).get("eos_token_id"))
    sources.append(model_config.text_config.get("eos_token_id"))
    if tokenizer is not None:
        sources.append(getattr(tokenizer, "eos_token_id", None))
    for value in sources:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(v for v in value if isinstance(v, int))
    return ids
