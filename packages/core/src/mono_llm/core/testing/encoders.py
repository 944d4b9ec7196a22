"""Deterministic tiny BERT fixtures: an embedding model, a classifier and a cross-encoder.

Each is an HF-format folder (random weights, WordPiece tokenizer trained with `tokenizers`)
that HF transformers and sentence-transformers load as-is, so the engine's pooled outputs
can be compared with theirs on the same weights.

- tiny-bert: BertModel + sentence-transformers files (mean pooling, Normalize).
- tiny-bert-classifier: BertForSequenceClassification, 3 labels with id2label names.
- tiny-bert-cross-encoder: BertForSequenceClassification, num_labels=1 (score / rerank).
- tiny-qwen2-classifier: Qwen2ForSequenceClassification (2 labels), the decoder classifier
  shape of reward models and Qwen rerankers, with tiny-qwen2's tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from mono_llm.core.testing.corpus import CORPUS

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDPIECE_VOCAB_SIZE = 1024
BERT_SHAPE: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
    # Wider than HF's 0.02 so outputs differ clearly between inputs and a wrong layer shows.
    "initializer_range": 0.2,
}
CLASSIFIER_LABELS = {0: "negative", 1: "neutral", 2: "positive"}

ENCODER_FIXTURES = ("tiny-bert", "tiny-bert-classifier", "tiny-bert-cross-encoder")
DECODER_CLASSIFIER_FIXTURES = ("tiny-qwen2-classifier",)
POOLING_FIXTURES = ENCODER_FIXTURES + DECODER_CLASSIFIER_FIXTURES


def train_wordpiece(out_dir: Path, *, max_length: int = 512) -> int:
    """Write a lower-casing BERT WordPiece tokenizer into `out_dir`; return its vocab size.

    Writes tokenizer.json (the fast tokenizer) and vocab.txt (so the slow BertTokenizer
    and sentence-transformers' loaders both work).
    """
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=WORDPIECE_VOCAB_SIZE,
        min_frequency=1,
        special_tokens=BERT_SPECIALS,
        show_progress=False,
    )
    tokenizer.train_from_iterator([CORPUS] * 4, trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    vocab = tokenizer.get_vocab()
    ordered = sorted(vocab, key=vocab.__getitem__)
    (out_dir / "vocab.txt").write_text("\n".join(ordered) + "\n")
    config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": True,
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
        "model_max_length": max_length,
        "clean_up_tokenization_spaces": True,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special = {k: config[k] for k in ("unk_token", "sep_token", "pad_token", "cls_token")}
    special["mask_token"] = "[MASK]"
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    return tokenizer.get_vocab_size()


def build_encoder(name: str, out_dir: Path, *, seed: int = 0) -> None:
    """Write the encoder fixture `name` (one of ENCODER_FIXTURES) into `out_dir`."""
    import transformers  # heavy import, only when a fixture is built

    if name not in ENCODER_FIXTURES:
        raise KeyError(f"unknown encoder fixture {name!r}")
    vocab = train_wordpiece(out_dir)
    overrides: dict[str, Any] = {}
    if name == "tiny-bert-classifier":
        overrides = {
            "num_labels": 3,
            "id2label": dict(CLASSIFIER_LABELS),
            "label2id": {v: k for k, v in CLASSIFIER_LABELS.items()},
        }
    elif name == "tiny-bert-cross-encoder":
        overrides = {"num_labels": 1}
    config = transformers.BertConfig(vocab_size=vocab, **BERT_SHAPE, **overrides)
    arch = "BertModel" if name == "tiny-bert" else "BertForSequenceClassification"
    config.architectures = [arch]
    torch.manual_seed(seed)
    with torch.no_grad():
        model = getattr(transformers, arch)(config).to(torch.float32)
        # LayerNorm weights at exactly 1 / biases at 0 would hide a swapped gamma/beta.
        for module_name, param in model.named_parameters():
            if "LayerNorm" in module_name or module_name.endswith("bias"):
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(out_dir, safe_serialization=True)
    config_path = out_dir / "config.json"
    saved = json.loads(config_path.read_text())
    saved.setdefault("torch_dtype", "float32")
    if name == "tiny-bert-cross-encoder":
        # What sentence-transformers' CrossEncoder records for a one-label reranker.
        saved["sentence_transformers"] = {"activation_fn": "torch.nn.modules.activation.Sigmoid"}
    config_path.write_text(json.dumps(saved, indent=2))
    if name == "tiny-bert":
        _write_sentence_transformers_files(out_dir, BERT_SHAPE["hidden_size"])


def _write_sentence_transformers_files(out_dir: Path, hidden_size: int) -> None:
    """modules.json + 1_Pooling (mean) + Normalize, as all-MiniLM-L6-v2 ships them."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
        {
            "idx": 2,
            "name": "2",
            "path": "2_Normalize",
            "type": "sentence_transformers.models.Normalize",
        },
    ]
    (out_dir / "modules.json").write_text(json.dumps(modules, indent=2))
    pooling = {
        "word_embedding_dimension": hidden_size,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    (out_dir / "1_Pooling").mkdir()
    (out_dir / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    (out_dir / "2_Normalize").mkdir()
    (out_dir / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 128, "do_lower_case": False}, indent=2)
    )


def build_decoder_classifier(name: str, out_dir: Path, *, seed: int = 0) -> None:
    """Write tiny-qwen2-classifier: tiny-qwen2's shape and tokenizer, a 2-label score head."""
    import transformers

    from mono_llm.core.testing.causal_lm import BASE_SHAPE, SPECS

    if name not in DECODER_CLASSIFIER_FIXTURES:
        raise KeyError(f"unknown decoder classifier fixture {name!r}")
    spec = SPECS["tiny-qwen2"]
    vocab = spec.train_tokenizer(out_dir)
    pad_id = spec.special_tokens.index(spec.pad_token)
    labels = {0: "bad", 1: "good"}
    config = transformers.Qwen2Config(
        vocab_size=vocab,
        pad_token_id=pad_id,
        eos_token_id=spec.special_tokens.index(spec.eos_token),
        num_labels=2,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
        **BASE_SHAPE,
        **spec.config_overrides,
    )
    config.architectures = ["Qwen2ForSequenceClassification"]
    torch.manual_seed(seed)
    with torch.no_grad():
        model = transformers.Qwen2ForSequenceClassification(config).to(torch.float32)
        for module_name, param in model.named_parameters():
            if "norm" in module_name:
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(out_dir, safe_serialization=True)
    config_path = out_dir / "config.json"
    saved = json.loads(config_path.read_text())
    saved.setdefault("torch_dtype", "float32")
    config_path.write_text(json.dumps(saved, indent=2))
