"""Train the small byte-level BPE tokenizers that the fixture models use."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from mono_llm.core.testing.corpus import CORPUS


def train_byte_level_bpe(
    out_dir: Path,
    *,
    special_tokens: list[str],
    vocab_size: int,
    bos_token: str | None,
    eos_token: str,
    pad_token: str | None,
    chat_template: str | None,
    add_bos: bool,
    extra_config: dict | None = None,
) -> int:
    """Write tokenizer.json and tokenizer_config.json into `out_dir`; return the vocab size.

    Special tokens come first in the vocabulary so their ids are stable and small.
    `chat_template` None writes none (a base model's tokenizer_config.json has no such key).
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeating the text gives the trainer enough pair counts to reach the vocab size.
    tokenizer.train_from_iterator([CORPUS] * 4, trainer=trainer)
    if add_bos and bos_token is not None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A",
            pair=f"{bos_token} $A {bos_token} $B",
            special_tokens=[(bos_token, tokenizer.token_to_id(bos_token))],
        )
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / "tokenizer.json"))

    added = {
        str(tokenizer.token_to_id(tok)): {
            "content": tok,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for tok in special_tokens
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": bos_token,
        "eos_token": eos_token,
        "pad_token": pad_token,
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1024,
        "chat_template": chat_template,
        **(extra_config or {}),
    }
    if chat_template is None:
        del config["chat_template"]
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    special_map = {"bos_token": bos_token, "eos_token": eos_token}
    if pad_token:
        special_map["pad_token"] = pad_token
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps({k: v for k, v in special_map.items() if v}, indent=2)
    )
    return tokenizer.get_vocab_size()
