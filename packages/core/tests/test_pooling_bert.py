"""BERT encoders match sentence-transformers and HF transformers on the same weights."""

from __future__ import annotations

import pytest
import torch
import transformers

from mono_llm.core.models.bert import EncoderAttentionMetadata
from mono_llm.core.pooling.model_loader import load_encoder_model
from mono_llm.core.pooling.pooler import finalize_pooled
from mono_llm.core.pooling.tasks import read_hf_config, resolve_model_tasks
from mono_llm.core.pooling_params import PoolingParams
from mono_llm.core.testing import fixture_path, minilm_path

TEXTS = [
    "Hello, how are you?",
    "The quick brown fox jumps over the lazy dog, and then it runs away into the forest.",
    "A",
]
PAIRS = [
    ("what is the capital of France?", "Paris is the capital of France."),
    ("hello", "the quick brown fox"),
    ("a b c", "x"),
]


def _encode(path, encodings, params: PoolingParams):
    """Run our encoder on a ragged batch of tokenizer outputs; return finalized rows."""
    config = read_hf_config(path)
    tasks = resolve_model_tasks("auto", config["architectures"], path, config)
    model = load_encoder_model(path, config, tasks)
    ids = torch.tensor([i for e in encodings for i in e["input_ids"]])
    token_types = torch.tensor([i for e in encodings for i in e["token_type_ids"]])
    lens = [len(e["input_ids"]) for e in encodings]
    positions = torch.cat([torch.arange(n) for n in lens])
    with torch.no_grad():
        hidden = model(ids, positions, lens, token_types)
        pooled = model.pool(hidden, lens)
    return torch.stack([finalize_pooled(row, params, tasks) for row in pooled])


@pytest.mark.parametrize("which", ["minilm", "tiny-bert"])
def test_embeddings_match_sentence_transformers(which):
    from sentence_transformers import SentenceTransformer

    path = minilm_path() if which == "minilm" else fixture_path("tiny-bert")
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    ours = _encode(path, [tokenizer(t) for t in TEXTS], PoolingParams(task="embed"))
    reference = torch.tensor(SentenceTransformer(str(path), device="cpu").encode(TEXTS))
    cosine = torch.nn.functional.cosine_similarity(ours, reference)
    assert cosine.min().item() >= 0.9999
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)
    # Normalized, and different texts give clearly different vectors.
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(len(TEXTS)))
    assert (ours[0] @ ours[1]).item() < 0.99


@pytest.mark.parametrize("name", ["tiny-bert-classifier", "tiny-bert-cross-encoder"])
def test_classifier_logits_match_transformers(name):
    path = fixture_path(name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    ours = _encode(path, [tokenizer(a, b) for a, b in PAIRS], PoolingParams(task="encode"))
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(path).eval()
    batch = tokenizer(
        [a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        reference = hf(**batch).logits
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)
    # classify applies softmax (3 labels) or sigmoid (one label, a cross-encoder).
    probs = _encode(path, [tokenizer(a, b) for a, b in PAIRS], PoolingParams(task="classify"))
    expected = reference.sigmoid() if reference.shape[1] == 1 else reference.softmax(-1)
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=1e-4)


def test_token_types_change_the_cross_encoder_score():
    path = fixture_path("tiny-bert-cross-encoder")
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    pair = tokenizer(*PAIRS[0])
    flat = dict(pair, token_type_ids=[0] * len(pair["input_ids"]))
    scores = _encode(path, [pair, flat], PoolingParams(task="encode"))
    assert abs(scores[0, 0].item() - scores[1, 0].item()) > 1e-4


def test_attention_metadata_maps_ragged_tokens_to_padded_rows():
    meta = EncoderAttentionMetadata.build([2, 3, 1], torch.device("cpu"))
    assert meta.max_len == 3
    assert meta.padded_index.tolist() == [0, 1, 3, 4, 5, 6]
    assert meta.key_mask is not None
    assert meta.key_mask[:, 0, 0].tolist() == [
        [True, True, False],
        [True, True, True],
        [True, False, False],
    ]
    assert EncoderAttentionMetadata.build([4, 4], torch.device("cpu")).key_mask is None


def test_batching_does_not_change_a_sequence_embedding():
    path = fixture_path("tiny-bert")
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    alone = _encode(path, [tokenizer(TEXTS[1])], PoolingParams())
    batched = _encode(path, [tokenizer(t) for t in TEXTS], PoolingParams())
    torch.testing.assert_close(alone[0], batched[1], atol=1e-6, rtol=1e-5)
