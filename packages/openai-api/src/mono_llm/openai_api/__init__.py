"""mono-llm's OpenAI-compatible server and the `mono-llm` command line.

`build_app(engine_args | [engine_args, ...]) -> FastAPI` is the public entry (also what Ray
Serve wraps); `mono-llm serve` is `build_app` plus uvicorn. Imports are lazy so that
`mono-llm --version` does not pay for FastAPI and torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mono_llm.openai_api._version import __version__

_EXPORTS = {
    "build_app": "mono_llm.openai_api.app",
    "ServerArgs": "mono_llm.openai_api.server_state",
}

__all__ = ["ServerArgs", "__version__", "build_app"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mono_llm.openai_api' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from mono_llm.openai_api.app import build_app
    from mono_llm.openai_api.server_state import ServerArgs
