"""Variant model folders derived from the tiny fixtures, shaped like checkpoints seen in the
wild: other config keys, tokenizer files, chat-template files, weight formats.

Users point mono-llm at HF folders it has never seen; tests prove the general case by
rewriting a fixture copy the way real exports differ (a bare tokenizer.json, a Llama-2
sentencepiece folder, `.bin` shards, `torch_dtype` bfloat16, tensors without `model.`, ...).
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mono_llm.core.testing import fixture_path

StateDict = dict[str, torch.Tensor]


def derive_model(
    base: str,
    dest: Path,
    *,
    config: Callable[[dict[str, Any]], None] | None = None,
    tokenizer_config: Callable[[dict[str, Any]], None] | None = None,
    weights: Callable[[StateDict], StateDict | None] | None = None,
    weight_format: str = "safetensors",
    shards: int = 1,
    remove: tuple[str, ...] = (),
    write: dict[str, str] | None = None,
) -> Path:
    """A copy of fixture `base` in `dest`, edited in place by the callbacks.

    `config` / `tokenizer_config` edit the parsed JSON; `weights` edits (or returns a new)
    state dict, saved as `weight_format` "safetensors" or "bin" in `shards` files (with the
    HF index file when sharded); `remove` deletes files; `write` adds text files.
    """
    from safetensors.torch import load_file

    source = fixture_path(base)
    dest.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.suffix != ".safetensors":
            shutil.copy(item, dest / item.name)
    if config is not None:
        _edit_json(dest / "config.json", config)
    if tokenizer_config is not None:
        _edit_json(dest / "tokenizer_config.json", tokenizer_config)
    state = load_file(source / "model.safetensors")
    if weights is not None:
        state = weights(state) or state
    save_weights(state, dest, weight_format, shards)
    for name in remove:
        (dest / name).unlink()
    for name, text in (write or {}).items():
        (dest / name).write_text(text)
    return dest


def save_weights(state: StateDict, dest: Path, weight_format: str, shards: int = 1) -> None:
    """Write `state` as HF names it: model.safetensors / pytorch_model.bin, or numbered
    shards plus `<name>.index.json` mapping each tensor to its shard."""
    from safetensors.torch import save_file

    stem, suffix = (
        ("model", "safetensors")
        if weight_format == "safetensors"
        else (
            "pytorch_model",
            "bin",
        )
    )
    names = sorted(state)
    groups = [names[i::shards] for i in range(shards)]
    weight_map = {}
    for index, group in enumerate(groups, start=1):
        file = f"{stem}.{suffix}" if shards == 1 else f"{stem}-{index:05d}-of-{shards:05d}.{suffix}"
        part = {name: state[name].contiguous() for name in group}
        if weight_format == "safetensors":
            save_file(part, dest / file, metadata={"format": "pt"})
        else:
            torch.save(part, dest / file)
        weight_map.update(dict.fromkeys(group, file))
    if shards > 1:
        index = {"metadata": {}, "weight_map": weight_map}
        (dest / f"{stem}.{suffix}.index.json").write_text(json.dumps(index, indent=2))


def _edit_json(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))


def train_sentencepiece(dest: Path, vocab_size: int = 600) -> int:
    """A Llama-2-style sentencepiece BPE `tokenizer.model` (byte fallback, <unk>/<s>/</s> at
    ids 0/1/2) trained on the fixture corpus; returns its vocabulary size."""
    import sentencepiece as spm

    from mono_llm.core.testing.corpus import CORPUS

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS.splitlines()),
        model_writer=buffer,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=0.995,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        normalization_rule_name="identity",
        minloglevel=2,
        num_threads=1,
    )
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "tokenizer.model").write_bytes(buffer.getvalue())
    (dest / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "add_bos_token": True,
                "add_eos_token": False,
                "legacy": False,
            }
        )
    )
    return vocab_size
