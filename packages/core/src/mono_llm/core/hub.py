"""Model and tokenizer locations: a local folder, or a hub id resolved through huggingface_hub.

vLLM users type `org/name`; the engine itself only ever reads a local folder. This module turns
the one into the other: a folder that exists is used as it is; otherwise an `org/name` id is
looked up in the Hugging Face cache (`HF_HUB_CACHE`, or `download_dir`) and, when the hub is
reachable and `HF_HUB_OFFLINE` is not set, downloaded into it. Only the files an engine reads
are fetched (configs, safetensors weights, tokenizer files, chat templates), never the
duplicate PyTorch or TensorFlow weights a repository often carries beside them.
"""

from __future__ import annotations

import os
from pathlib import Path

from mono_llm.core.errors import UnsupportedModelError

# What the engine reads from a model repository; `.bin` weights only when no safetensors exist.
_MODEL_FILES = [
    "*.json",
    "*.safetensors",
    "*.model",
    "*.txt",
    "*.jinja",
    "*.tiktoken",
    "tokenizer*",
]
_LEGACY_WEIGHTS = ["pytorch_model*.bin"]


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return (
        len(parts) == 2
        and all(parts)
        and not name.startswith((".", "~"))
        and not any(part in (".", "..") for part in parts)
    )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_model_dir(
    name: str,
    *,
    revision: str | None = None,
    download_dir: str | None = None,
    what: str = "model",
) -> Path:
    """The local folder for `name`: itself if it is a folder, else the hub snapshot of that id.

    Raises UnsupportedModelError (a clear message, not a hub traceback) when the name is
    neither a folder nor a resolvable hub id.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if not _looks_like_hub_id(name):
        raise UnsupportedModelError(
            f"{what} {name!r} does not exist: it is neither a local folder nor a hub id of the "
            "form 'org/name'."
        )
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError
    except ImportError as exc:  # pragma: no cover - transformers always brings huggingface_hub
        raise UnsupportedModelError(
            f"{what} {name!r} is not a local folder, and huggingface_hub is not installed to "
            "resolve it as a hub id."
        ) from exc
    kwargs = {"repo_id": name, "revision": revision, "cache_dir": download_dir}
    offline = _offline()
    try:
        # The cache first: a snapshot already there needs no network (and no HEAD request).
        return Path(snapshot_download(**kwargs, local_files_only=True))
    except HFValidationError as exc:
        raise UnsupportedModelError(f"{what} {name!r} is not a valid hub id: {exc}") from exc
    except Exception as cached_miss:
        if offline:
            raise UnsupportedModelError(
                f"{what} {name!r} is not a local folder and is not in the Hugging Face cache "
                f"({download_dir or _cache_dir()}), and HF_HUB_OFFLINE is set. Download it "
                "first (huggingface-cli download) or pass a folder."
            ) from cached_miss
    try:
        folder = Path(snapshot_download(**kwargs, allow_patterns=_MODEL_FILES))
        if what == "model" and not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(**kwargs, allow_patterns=_LEGACY_WEIGHTS))
        return folder
    except Exception as exc:
        raise UnsupportedModelError(
            f"{what} {name!r} is not a local folder and could not be downloaded from the hub "
            f"({type(exc).__name__}: {exc}). Pass a local folder, or set HF_HUB_OFFLINE=1 with "
            "the snapshot in the cache."
        ) from exc


def _cache_dir() -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    return str(HF_HUB_CACHE)
