"""Deterministic tiny GPT-2 fixture in HF format (random weights, trained byte-level BPE).

tiny-gpt2 is shaped like gpt2 / distilgpt2: transformers' own `GPT2LMHeadModel` saves it, so
the checkpoint has GPT-2's names (`transformer.h.N.attn.c_attn...`) and Conv1D storage. The
tokenizer follows GPT-2's: one special token, `<|endoftext|>`, which is BOS and EOS; nothing
is prepended to prompts, there is no pad token and no chat template (a base model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mono_llm.core.testing.opt import save_random_model
from mono_llm.core.testing.tokenizer_builder import train_byte_level_bpe

GPT2_END_OF_TEXT = "<|endoftext|>"
GPT2_EOS_ID = 0  # the only special token, first in the vocabulary
VOCAB_SIZE = 1536

GPT2_SHAPE: dict[str, Any] = {
    "n_embd": 64,
    "n_layer": 2,
    "n_head": 4,
    "n_positions": 1024,
    # Wider than GPT-2's 0.02 so logits are spread out and greedy parity has no near-ties.
    "initializer_range": 0.2,
}
GPT2_FIXTURES: dict[str, dict[str, Any]] = {"tiny-gpt2": {}}


def train_gpt2_tokenizer(out_dir: Path) -> int:
    """GPT-2's tokenizer layout; returns the vocab size."""
    return train_byte_level_bpe(
        out_dir,
        special_tokens=[GPT2_END_OF_TEXT],
        vocab_size=VOCAB_SIZE,
        bos_token=GPT2_END_OF_TEXT,
        eos_token=GPT2_END_OF_TEXT,
        pad_token=None,
        chat_template=None,  # a base model ships none
        add_bos=False,
        extra_config={"unk_token": GPT2_END_OF_TEXT, "add_bos_token": False},
    )


def build_gpt2(name: str, out_dir: Path, *, seed: int = 0, **overrides: Any) -> None:
    """Write fixture `name` (a key of GPT2_FIXTURES) into the empty folder `out_dir`;
    `overrides` change further GPT2Config fields (the tests' config variants)."""
    import transformers  # heavy import, only when a fixture is built

    vocab = train_gpt2_tokenizer(out_dir)
    config = transformers.GPT2Config(
        vocab_size=vocab,
        bos_token_id=GPT2_EOS_ID,
        eos_token_id=GPT2_EOS_ID,
        **{**GPT2_SHAPE, **GPT2_FIXTURES[name], **overrides},
    )
    generation = {"bos_token_id": GPT2_EOS_ID, "eos_token_id": GPT2_EOS_ID}
    save_random_model(out_dir, config, "GPT2LMHeadModel", ".ln_", generation, seed)
