"""The models one server process serves, routed by the request's `model` field.

vLLM serves one model per process; here each `ServedModel` wraps its own `AsyncLLM`, and a
request names the one it wants (any of its served names). A request that names no model goes
to the first one, as vLLM does with its single model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mono_llm.openai_api.chat_template import ChatTemplate
from mono_llm.openai_api.errors import OpenAIError

if TYPE_CHECKING:
    from mono_llm.core.async_llm import AsyncLLM


@dataclass(slots=True)
class ServedModel:
    """One engine and what the API layer derives from it once, at startup."""

    engine: AsyncLLM
    names: list[str]  # served names; the first is the one /v1/models lists
    chat_template: ChatTemplate
    root: str  # the model folder
    max_model_len: int
    default_sampling: dict[str, Any] = field(default_factory=dict)
    created: int = field(default_factory=lambda: int(time.time()))
    log_requests: bool = False  # log each request's arrival (--no-disable-log-requests)
    max_log_len: int | None = None  # prompt tokens shown in that log line (None: all)

    @property
    def name(self) -> str:
        return self.names[0]

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer


class ServedModels:
    """Name -> ServedModel lookup with OpenAI's 404 for unknown names."""

    def __init__(self, models: list[ServedModel]) -> None:
        self.models = models
        self._by_name: dict[str, ServedModel] = {}
        for model in models:
            for name in model.names:
                if name in self._by_name:
                    raise ValueError(
                        f"served model name {name!r} is used twice; give each model its own "
                        "--served-model-name."
                    )
                self._by_name[name] = model

    def resolve(self, name: str | None) -> ServedModel:
        if not self.models:
            raise OpenAIError("No model is loaded yet.", 503)
        if name is None or name == "":
            return self.models[0]
        model = self._by_name.get(name)
        if model is None:
            raise OpenAIError(
                f"The model `{name}` does not exist. Served models: "
                f"{', '.join(m.name for m in self.models)}.",
                404,
                param="model",
                type="NotFoundError",
            )
        return model

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.models)

    def __len__(self) -> int:
        return len(self.models)
