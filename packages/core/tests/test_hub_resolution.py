"""Hub ids (org/name) resolve through the Hugging Face cache with no network, as vLLM users type them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mono_llm.core import LLM, EngineArgs, SamplingParams
from mono_llm.core.errors import UnsupportedModelError
from mono_llm.core.hub import resolve_model_dir
from mono_llm.core.testing import fixture_path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _populate_cache(cache: Path, repo_id: str, source: Path, revision: str = "main") -> Path:
    """Lay `source` out as huggingface_hub stores a snapshot: blobs linked from snapshots/<sha>."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / revision).write_text(COMMIT)
    for file in source.iterdir():
        if file.is_file():
            shutil.copy(file, snapshot / file.name)
    return snapshot


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_hub_id_resolves_from_the_cache_offline(offline_cache):
    snapshot = _populate_cache(offline_cache, "tiny-org/tiny-llama", fixture_path("tiny-llama"))
    folder = resolve_model_dir("tiny-org/tiny-llama", download_dir=str(offline_cache))
    assert folder == snapshot
    config = EngineArgs(
        model="tiny-org/tiny-llama", download_dir=str(offline_cache)
    ).create_engine_config()
    assert Path(config.model_config.model) == snapshot
    assert config.model_config.served_model_name == "tiny-org/tiny-llama"


def test_hub_id_serves_the_same_tokens_as_the_folder(offline_cache):
    _populate_cache(offline_cache, "tiny-org/tiny-llama", fixture_path("tiny-llama"))
    params = SamplingParams(temperature=0, max_tokens=6)
    from_hub = LLM(model="tiny-org/tiny-llama", download_dir=str(offline_cache))
    from_folder = LLM(model=str(fixture_path("tiny-llama")))
    prompt = "Hello, my name is"
    assert (
        from_hub.generate([prompt], params)[0].outputs[0].token_ids
        == from_folder.generate([prompt], params)[0].outputs[0].token_ids
    )


def test_revision_selects_the_ref(offline_cache):
    _populate_cache(offline_cache, "tiny-org/tiny-llama", fixture_path("tiny-llama"), "v1")
    assert resolve_model_dir("tiny-org/tiny-llama", revision="v1", download_dir=str(offline_cache))
    with pytest.raises(UnsupportedModelError, match="HF_HUB_OFFLINE"):
        resolve_model_dir("tiny-org/tiny-llama", download_dir=str(offline_cache))


def test_missing_hub_id_offline_is_a_clear_error(offline_cache):
    with pytest.raises(UnsupportedModelError, match="not in the Hugging Face cache"):
        EngineArgs(model="nobody/nothing", download_dir=str(offline_cache)).create_engine_config()


@pytest.mark.parametrize("name", ["/no/such/folder", "a/b/c", "../no-such-folder-for-mono-llm"])
def test_neither_folder_nor_hub_id(name, offline_cache):
    with pytest.raises(UnsupportedModelError, match="neither a local folder nor a hub id"):
        resolve_model_dir(name, download_dir=str(offline_cache))


def test_separate_tokenizer_hub_id(offline_cache):
    snapshot = _populate_cache(offline_cache, "tiny-org/tok", fixture_path("tiny-llama"))
    config = EngineArgs(
        model=str(fixture_path("tiny-llama")),
        tokenizer="tiny-org/tok",
        download_dir=str(offline_cache),
    ).create_engine_config()
    assert Path(config.model_config.tokenizer) == snapshot
