"""Pooling requests through the engine: LLM.embed / classify / score / encode, AsyncLLM.encode."""

from __future__ import annotations

import asyncio

import pytest
import torch
import transformers

from mono_llm.core import LLM, AsyncEngineArgs, AsyncLLM, PoolingParams
from mono_llm.core.errors import InvalidRequestError, PromptTooLongError, UnsupportedTaskError
from mono_llm.core.testing import fixture_path, minilm_path

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "A paged cache holds the keys and values of every token.",
    "Hello! How are you today?",
]


@pytest.fixture(scope="module")
def minilm() -> LLM:
    return LLM(str(minilm_path()))


@pytest.fixture(scope="module")
def sentence_transformer():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path()), device="cpu")


def test_embed_matches_sentence_transformers_in_one_step(minilm, sentence_transformer):
    steps_before = minilm.llm_engine.num_steps
    outputs = minilm.embed(TEXTS)
    assert minilm.llm_engine.num_steps == steps_before + 1  # batched: all three in one step
    ours = torch.tensor([o.outputs.embedding for o in outputs])
    reference = torch.tensor(sentence_transformer.encode(TEXTS))
    assert torch.nn.functional.cosine_similarity(ours, reference).min().item() >= 0.9999
    assert [o.request_id for o in outputs] == sorted((o.request_id for o in outputs), key=int)
    tokenizer = minilm.get_tokenizer()
    assert outputs[2].prompt_token_ids == tokenizer(TEXTS[2]).input_ids
    assert outputs[0].outputs.hidden_size == 384


def test_small_token_budget_spreads_prompts_over_steps(sentence_transformer):
    llm = LLM(str(minilm_path()), max_model_len=32, max_num_batched_tokens=32)
    texts = [f"{t} {i}" for i in range(2) for t in TEXTS]
    outputs = llm.embed(texts)
    assert llm.llm_engine.num_steps >= 3  # ~13-token prompts, two per 32-token step
    ours = torch.tensor([o.outputs.embedding for o in outputs])
    reference = torch.tensor(sentence_transformer.encode(texts))
    assert torch.nn.functional.cosine_similarity(ours, reference).min().item() >= 0.9999


def test_encode_returns_the_unnormalized_pooled_state(minilm):
    raw = minilm.encode(TEXTS[0])[0].outputs.data
    embedded = torch.tensor(minilm.embed(TEXTS[0])[0].outputs.embedding)
    assert abs(raw.norm().item() - 1.0) > 1e-3
    torch.testing.assert_close(raw / raw.norm(), embedded)
    normalized = minilm.encode(TEXTS[0], PoolingParams(normalize=True))[0].outputs.data
    torch.testing.assert_close(normalized, embedded)


def test_embedding_model_scores_by_cosine(minilm, sentence_transformer):
    documents = ["A fox jumped over a dog.", "Tax law is complicated."]
    scores = [o.outputs.score for o in minilm.score(TEXTS[0], documents)]
    vectors = torch.tensor(sentence_transformer.encode([TEXTS[0], *documents]))
    expected = [float(vectors[0] @ vectors[i]) for i in (1, 2)]
    assert scores == pytest.approx(expected, abs=1e-4)
    assert scores[0] > scores[1]


def test_cross_encoder_scores_match_transformers():
    path = fixture_path("tiny-bert-cross-encoder")
    llm = LLM(str(path))
    queries = ["what is the capital", "where does the fox live"]
    documents = ["Paris is the capital of France.", "The fox lives in the forest."]
    one_to_many = [o.outputs.score for o in llm.score(queries[0], documents)]
    pairwise = [o.outputs.score for o in llm.score(queries, documents)]
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        a = hf(**tokenizer([queries[0]] * 2, documents, padding=True, return_tensors="pt"))
        b = hf(**tokenizer(queries, documents, padding=True, return_tensors="pt"))
    assert one_to_many == pytest.approx(a.logits.sigmoid().flatten().tolist(), abs=1e-5)
    assert pairwise == pytest.approx(b.logits.sigmoid().flatten().tolist(), abs=1e-5)
    raw = llm.score(queries[0], documents[0], pooling_params=PoolingParams(use_activation=False))
    assert raw[0].outputs.score == pytest.approx(a.logits[0, 0].item(), abs=1e-5)
    with pytest.raises(InvalidRequestError, match="equally long"):
        llm.score(queries, [*documents, "third"])


@pytest.mark.parametrize("name", ["tiny-bert-classifier", "tiny-qwen2-classifier"])
def test_classify_matches_transformers(name):
    path = fixture_path(name)
    llm = LLM(str(path))
    outputs = llm.classify(TEXTS)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        expected = [hf(**tokenizer(t, return_tensors="pt")).logits[0].softmax(-1) for t in TEXTS]
    for out, probs in zip(outputs, expected, strict=True):
        assert out.outputs.probs == pytest.approx(probs.tolist(), abs=1e-5)
        assert out.outputs.num_classes == hf.config.num_labels


def test_task_errors_name_the_supported_tasks(minilm):
    with pytest.raises(UnsupportedTaskError, match="supports: embed, encode, score"):
        minilm.classify("hello")
    with pytest.raises(UnsupportedTaskError, match="'generate' task"):
        minilm.generate("hello")
    generator = LLM(str(fixture_path("tiny-llama")))
    with pytest.raises(UnsupportedTaskError, match="supports: generate"):
        generator.embed("hello")
    with pytest.raises(UnsupportedTaskError):
        generator.score("a", "b")


def test_prompt_limits_and_truncation(minilm):
    long_text = " ".join(["word"] * 400)
    # sentence-transformers' max_seq_length (256) bounds MiniLM's prompts.
    with pytest.raises(PromptTooLongError, match="256"):
        minilm.embed(long_text)
    truncated = minilm.embed(long_text, truncate_prompt_tokens=16)[0]
    tokenizer = minilm.get_tokenizer()
    assert len(truncated.prompt_token_ids) == 16
    assert truncated.prompt_token_ids[0] == tokenizer.cls_token_id  # [CLS] is kept
    assert truncated.prompt_token_ids[-1] == tokenizer.sep_token_id
    with pytest.raises(InvalidRequestError) as err:  # can never fit: refused, as vLLM
        minilm.embed(long_text, truncate_prompt_tokens=100_000)
    assert err.value.param == "truncate_prompt_tokens"
    with pytest.raises(InvalidRequestError, match="matryoshka") as info:
        minilm.embed("hi", pooling_params=PoolingParams(dimensions=32))
    assert info.value.param == "dimensions"
    token_ids = tokenizer("hello world").input_ids
    by_ids = minilm.embed({"prompt_token_ids": token_ids})[0].outputs.embedding
    assert by_ids == pytest.approx(minilm.embed("hello world")[0].outputs.embedding, abs=1e-6)


@pytest.mark.parametrize(
    "spelling", [{"task": "embed"}, {"runner": "pooling"}, {"convert": "embed"}], ids=str
)
def test_decoder_as_last_token_embedder(spelling):
    """--task embed (or vLLM's --runner pooling / --convert embed) on a causal LM: normalized
    hidden state of the prompt's last token."""
    path = fixture_path("tiny-qwen2")
    llm = LLM(str(path), **spelling)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    hf = transformers.AutoModel.from_pretrained(path).eval()
    out = llm.embed(TEXTS[:2])
    for text, result in zip(TEXTS[:2], out, strict=True):
        with torch.no_grad():
            hidden = hf(**tokenizer(text, return_tensors="pt")).last_hidden_state[0, -1]
        expected = torch.nn.functional.normalize(hidden, dim=0)
        assert result.outputs.embedding == pytest.approx(expected.tolist(), abs=1e-4)


def test_async_encode_matches_offline(minilm):
    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(model=str(minilm_path())))
    try:

        async def one(i: int, text: str):
            outputs = [
                out async for out in engine.encode(text, PoolingParams(task="embed"), f"req-{i}")
            ]
            assert len(outputs) == 1 and outputs[0].finished
            return outputs[0]

        async def main():
            return await asyncio.gather(*(one(i, t) for i, t in enumerate(TEXTS)))

        results = asyncio.run(main())
        offline = minilm.embed(TEXTS)
        for got, want in zip(results, offline, strict=True):
            assert got.outputs.data.tolist() == pytest.approx(want.outputs.embedding, abs=1e-6)

        async def generate_on_embedder():
            from mono_llm.core import SamplingParams

            async for _ in engine.generate("hi", SamplingParams(), "gen"):
                pass

        with pytest.raises(UnsupportedTaskError):
            asyncio.run(generate_on_embedder())
    finally:
        engine.shutdown()


def test_matryoshka_dimensions(tmp_path):
    """A model whose config declares Matryoshka training may truncate (then renormalize)."""
    import json
    import shutil

    source = fixture_path("tiny-bert")
    target = tmp_path / "tiny-bert-matryoshka"
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    config["matryoshka_dimensions"] = [16, 32, 64]
    (target / "config.json").write_text(json.dumps(config))
    llm = LLM(str(target))
    full = torch.tensor(llm.embed(TEXTS[0])[0].outputs.embedding)
    short = llm.embed(TEXTS[0], pooling_params=PoolingParams(dimensions=32))[0]
    vector = torch.tensor(short.outputs.embedding)
    assert vector.shape == (32,)
    torch.testing.assert_close(vector, torch.nn.functional.normalize(full[:32], dim=0))
    with pytest.raises(InvalidRequestError, match="trained for 16, 32, 64"):
        llm.embed("x", pooling_params=PoolingParams(dimensions=24))


@pytest.mark.parametrize(
    ("name", "classifier"),
    [
        ("tiny-gemma", "GemmaForSequenceClassification"),
        # Text-only Gemma 3's classifier name (Gemma3ForSequenceClassification is multimodal).
        ("tiny-gemma3", "Gemma3TextForSequenceClassification"),
    ],
)
def test_gemma_classifier_and_embedder_match_transformers(tmp_path, name, classifier):
    """Gemma's switches (scaled embeddings, 1 + weight norms, GeGLU; Gemma 3's q/k norms and
    per-layer rotary tables) reach the pooling heads: a sequence classifier made from the
    fixture with a random `score` head, and the fixture itself as a last-token embedder."""
    from mono_llm.core.testing.variants import derive_model

    def add_score(state):
        state["score.weight"] = torch.randn(2, 64, generator=torch.Generator().manual_seed(0))

    def as_classifier(config):
        config.update(architectures=[classifier])
        config.update(id2label={"0": "bad", "1": "good"}, label2id={"bad": 0, "good": 1})

    path = derive_model(name, tmp_path / "cls", config=as_classifier, weights=add_score)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(path).eval()
    assert hf.config.num_labels == 2
    outputs = LLM(str(path)).classify(TEXTS)
    for text, out in zip(TEXTS, outputs, strict=True):
        with torch.no_grad():
            probs = hf(**tokenizer(text, return_tensors="pt")).logits[0].softmax(-1)
        assert out.outputs.probs == pytest.approx(probs.tolist(), abs=1e-5)

    base = fixture_path(name)
    body = transformers.AutoModel.from_pretrained(base).eval()
    for text, result in zip(TEXTS[:2], LLM(str(base), task="embed").embed(TEXTS[:2]), strict=True):
        with torch.no_grad():
            hidden = body(**tokenizer(text, return_tensors="pt")).last_hidden_state[0, -1]
        expected = torch.nn.functional.normalize(hidden, dim=0)
        assert result.outputs.embedding == pytest.approx(expected.tolist(), abs=1e-4)


def test_gemma3_bare_text_model_embeds_as_transformers(tmp_path):
    """A Gemma3TextModel checkpoint (the body alone, tensor names without `model.`) serves
    last-token embeddings equal to transformers' on the same body."""
    from mono_llm.core.testing.variants import derive_model

    def bare(state):
        return {name.removeprefix("model."): tensor for name, tensor in state.items()}

    path = derive_model(
        "tiny-gemma3",
        tmp_path / "bare",
        config=lambda c: c.update(architectures=["Gemma3TextModel"]),
        weights=bare,
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    body = transformers.AutoModel.from_pretrained(fixture_path("tiny-gemma3")).eval()
    results = LLM(str(path)).embed(TEXTS[:2])
    for text, result in zip(TEXTS[:2], results, strict=True):
        with torch.no_grad():
            hidden = body(**tokenizer(text, return_tensors="pt")).last_hidden_state[0, -1]
        expected = torch.nn.functional.normalize(hidden, dim=0)
        assert result.outputs.embedding == pytest.approx(expected.tolist(), abs=1e-4)
