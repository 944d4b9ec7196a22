"""Deterministic tiny OPT fixtures in HF format (random weights, trained byte-level BPE).

- tiny-opt: shaped like opt-125m / 1.3b / 6.7b: pre-LayerNorm, a final LayerNorm,
  embeddings as wide as the body, lm_head tied to the embedding.
- tiny-opt-post-ln: shaped like opt-350m: post-LayerNorm blocks, no final LayerNorm, and
  embeddings narrower than the body (`word_embed_proj_dim`), so `project_in` / `project_out`.

The tokenizer follows OPT's GPT-2 one: `<s>` `<pad>` `</s>` `<unk>` at ids 0-3, `</s>` (id 2)
prepended to every prompt as BOS and also the EOS, `<pad>` (id 1) the padding, and no chat
template (OPT is a base model). tiny-opt ships it as tokenizer.json; tiny-opt-post-ln in the
files facebook/opt-* repositories ship (vocab.json, merges.txt, a `GPT2Tokenizer`
tokenizer_config.json with `add_bos_token`), which transformers converts on load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mono_llm.core.testing.tokenizer_builder import train_byte_level_bpe

OPT_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
OPT_BOS_ID = 2  # `</s>`, as in every OPT tokenizer
OPT_PAD_ID = 1
VOCAB_SIZE = 1536

OPT_SHAPE: dict[str, Any] = {
    "hidden_size": 64,
    "ffn_dim": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 1024,
    "activation_function": "relu",
    # Wider than OPT's 0.02 so logits are spread out and greedy parity has no near-ties.
    "init_std": 0.2,
}
OPT_FIXTURES: dict[str, dict[str, Any]] = {
    "tiny-opt": {"do_layer_norm_before": True},
    "tiny-opt-post-ln": {"do_layer_norm_before": False, "word_embed_proj_dim": 32},
}
# Fixtures whose tokenizer comes as OPT's own vocab.json + merges.txt rather than tokenizer.json.
GPT2_FILES_FIXTURES = frozenset({"tiny-opt-post-ln"})


def train_opt_tokenizer(out_dir: Path) -> int:
    """OPT's tokenizer layout (BOS `</s>` prepended, no chat template); returns the vocab size."""
    return train_byte_level_bpe(
        out_dir,
        special_tokens=OPT_SPECIALS,
        vocab_size=VOCAB_SIZE,
        bos_token="</s>",
        eos_token="</s>",
        pad_token="<pad>",
        chat_template=None,  # a base model ships none
        add_bos=True,
        extra_config={"unk_token": "</s>"},
    )


def write_gpt2_tokenizer_files(out_dir: Path) -> None:
    """Replace tokenizer.json by OPT's published tokenizer files: vocab.json and merges.txt of
    the same BPE, and the tokenizer_config.json / special_tokens_map.json of facebook/opt-*."""
    from tokenizers import Tokenizer

    tokenizer_json = out_dir / "tokenizer.json"
    Tokenizer.from_file(str(tokenizer_json)).model.save(str(out_dir))  # vocab.json, merges.txt
    tokenizer_json.unlink()

    def token(content: str) -> dict[str, Any]:
        return {
            "__type": "AddedToken",
            "content": content,
            "lstrip": False,
            "normalized": True,
            "rstrip": False,
            "single_word": False,
        }

    config = {
        "add_bos_token": True,
        "add_prefix_space": False,
        "bos_token": token("</s>"),
        "eos_token": token("</s>"),
        "errors": "replace",
        "pad_token": token("<pad>"),
        "unk_token": token("</s>"),
        "model_max_length": 1000000000000000019884624838656,
        "tokenizer_class": "GPT2Tokenizer",
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special = {key: config[key] for key in ("bos_token", "eos_token", "unk_token")}
    special = {
        key: {k: v for k, v in value.items() if k != "__type"} for key, value in special.items()
    }
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps({**special, "pad_token": "<pad>"}, indent=2)
    )


def build_opt(name: str, out_dir: Path, *, seed: int = 0, **overrides: Any) -> None:
    """Write fixture `name` (a key of OPT_FIXTURES) into the empty folder `out_dir`;
    `overrides` change further OPTConfig fields (the tests' config variants)."""
    import transformers  # heavy import, only when a fixture is built

    vocab = train_opt_tokenizer(out_dir)
    if name in GPT2_FILES_FIXTURES:
        write_gpt2_tokenizer_files(out_dir)
    config = transformers.OPTConfig(
        # Padded past the tokenizer to a multiple of 8, as OPT's 50272 rows over a 50265-token
        # tokenizer: the engine must cope with ids the tokenizer does not know.
        vocab_size=-(-vocab // 8) * 8,
        bos_token_id=OPT_BOS_ID,
        eos_token_id=OPT_BOS_ID,
        pad_token_id=OPT_PAD_ID,
        **{**OPT_SHAPE, **OPT_FIXTURES[name], **overrides},
    )
    generation = {
        "bos_token_id": OPT_BOS_ID,
        "eos_token_id": OPT_BOS_ID,
        "pad_token_id": OPT_PAD_ID,
    }
    save_random_model(out_dir, config, "OPTForCausalLM", "layer_norm", generation, seed)


def save_random_model(
    out_dir: Path,
    config: Any,
    architecture: str,
    norm_marker: str,
    generation: dict[str, Any],
    seed: int,
) -> None:
    """Save transformers' `architecture` built from `config` with seeded random float32
    weights, its generation_config.json, and `torch_dtype` in config.json.

    LayerNorms at weight 1 / bias 0, and zero biases, would let a missing or misplaced norm
    or bias pass unnoticed: parameters whose names contain `norm_marker`, and every bias,
    are jittered."""
    import transformers

    config.architectures = [architecture]
    torch.manual_seed(seed)
    with torch.no_grad():
        model = getattr(transformers, architecture)(config).to(torch.float32)
        for param_name, param in model.named_parameters():
            if norm_marker in param_name or param_name.endswith(".bias"):
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(out_dir, safe_serialization=True)
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2))
    config_path = out_dir / "config.json"
    saved = json.loads(config_path.read_text())
    saved.setdefault("torch_dtype", "float32")
    config_path.write_text(json.dumps(saved, indent=2))
