"""A causal LM served as a classifier through `classifier_from_token` (vLLM's hf_overrides
recipe for Qwen3-Reranker): its scores are the LM's own logits of the named tokens, checked
against transformers' causal LM on the same weights, untied and tied heads alike."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from mono_llm.core import LLM, UnsupportedModelError
from mono_llm.core.testing import fixture_path
from mono_llm.core.testing.variants import derive_model

QUERY = "What is the capital of France?"
DOCUMENTS = ["Paris is the capital of France.", "Bananas are yellow."]


def _two_tokens(folder: Path) -> tuple[list[str], list[int]]:
    """Two single-token words of the fixture's vocabulary, playing "no" and "yes"."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    vocab = tokenizer.get_vocab()
    names = sorted(t for t in vocab if t.isalpha() and len(t) > 2)[:2]
    return names, [vocab[n] for n in names]


def _lm_last_logits(folder: Path, query: str, document: str) -> torch.Tensor:
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    ids = tokenizer(query, document, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits[0, -1]


def _reranker(folder: Path, tokens: list[str], margin: bool = True) -> LLM:
    overrides = {
        "architectures": ["Qwen3ForSequenceClassification"],
        "classifier_from_token": tokens,
        "is_original_qwen3_reranker": margin,
    }
    return LLM(str(folder), runner="pooling", hf_overrides=overrides, kv_cache_memory_gib=0.01)


@pytest.fixture(scope="module")
def tied(tmp_path_factory) -> Path:
    """tiny-qwen3 with its LM head tied to the embedding (as Qwen3-Reranker-0.6B ships)."""

    def tie(state: dict) -> dict:
        state["model.embed_tokens.weight"] = state.pop("lm_head.weight")
        return state

    return derive_model(
        "tiny-qwen3",
        tmp_path_factory.mktemp("tied") / "m",
        config=lambda c: c.update(tie_word_embeddings=True),
        weights=tie,
    )


@pytest.mark.parametrize("which", ["untied", "tied"])
def test_reranker_score_is_the_yes_no_logit_margin(which: str, tied: Path) -> None:
    folder = fixture_path("tiny-qwen3") if which == "untied" else tied
    tokens, (no, yes) = _two_tokens(folder)
    llm = _reranker(folder, tokens)
    scores = [out.outputs.score for out in llm.score(QUERY, DOCUMENTS)]
    for document, score in zip(DOCUMENTS, scores, strict=True):
        logits = _lm_last_logits(folder, QUERY, document)
        expected = torch.sigmoid(logits[yes] - logits[no]).item()
        assert score == pytest.approx(expected, abs=1e-4)
    assert scores[0] != pytest.approx(scores[1], abs=1e-6)


def test_tokens_without_the_margin_flag_are_one_label_each() -> None:
    folder = fixture_path("tiny-qwen3")
    tokens, ids = _two_tokens(folder)
    llm = _reranker(folder, tokens, margin=False)
    probs = llm.classify(QUERY)[0].outputs.probs
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        logits = model(tokenizer(QUERY, return_tensors="pt").input_ids).logits[0, -1]
    expected = torch.softmax(logits[ids], dim=0).tolist()
    assert probs == pytest.approx(expected, abs=1e-4)


def test_a_token_outside_the_vocabulary_is_refused() -> None:
    with pytest.raises(UnsupportedModelError, match="not one token"):
        _reranker(fixture_path("tiny-qwen3"), ["no", "definitely-not-a-token-here"])
    with pytest.raises(UnsupportedModelError, match="two tokens"):
        _reranker(fixture_path("tiny-qwen3"), ["a", "b", "c"])
