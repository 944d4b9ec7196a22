"""Deterministic tiny GPT-NeoX fixture in HF format (random weights, trained byte-level BPE).

tiny-gpt-neox is shaped like Pythia: partial rotary (rotary_pct 0.25 of a 16-wide head),
parallel residual, attention biases, an untied `embed_out`, saved by transformers' own
`GPTNeoXForCausalLM`. The tokenizer follows Pythia's: `<|endoftext|>` (id 0) is BOS and EOS,
`<|padding|>` (id 1) the padding, nothing is prepended and there is no chat template.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mono_llm.core.testing.opt import save_random_model
from mono_llm.core.testing.tokenizer_builder import train_byte_level_bpe

NEOX_SPECIALS = ["<|endoftext|>", "<|padding|>"]
NEOX_EOS_ID = 0
VOCAB_SIZE = 1536

NEOX_SHAPE: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 1024,
    "rotary_pct": 0.25,
    "hidden_act": "gelu",
    "use_parallel_residual": True,
    "tie_word_embeddings": False,
    # Wider than 0.02 so logits are spread out and greedy parity has no near-ties.
    "initializer_range": 0.2,
}
NEOX_FIXTURES: dict[str, dict[str, Any]] = {"tiny-gpt-neox": {}}


def build_gpt_neox(name: str, out_dir: Path, *, seed: int = 0, **overrides: Any) -> None:
    """Write fixture `name` (a key of NEOX_FIXTURES) into the empty folder `out_dir`;
    `overrides` change further GPTNeoXConfig fields (the tests' config variants)."""
    import transformers  # heavy import, only when a fixture is built

    vocab = train_byte_level_bpe(
        out_dir,
        special_tokens=NEOX_SPECIALS,
        vocab_size=VOCAB_SIZE,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|padding|>",
        chat_template=None,  # a base model ships none
        add_bos=False,
        extra_config={"unk_token": "<|endoftext|>"},
    )
    config = transformers.GPTNeoXConfig(
        vocab_size=vocab,
        bos_token_id=NEOX_EOS_ID,
        eos_token_id=NEOX_EOS_ID,
        **{**NEOX_SHAPE, **NEOX_FIXTURES[name], **overrides},
    )
    generation = {"bos_token_id": NEOX_EOS_ID, "eos_token_id": NEOX_EOS_ID}
    save_random_model(out_dir, config, "GPTNeoXForCausalLM", "layernorm", generation, seed)
