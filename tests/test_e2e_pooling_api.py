"""End to end: the pooling endpoints over real HTTP, with the real `openai` client.

One server process serves all-MiniLM-L6-v2 (embeddings), the tiny BERT classifier and
cross-encoder fixtures, and tiny-llama (generative, to check the 400 on /v1/embeddings).
"""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest
import torch
import transformers

from mono_llm.core.testing import fixture_path, minilm_path

MINILM = "all-MiniLM-L6-v2"
CLASSIFIER = "tiny-bert-classifier"
CROSS_ENCODER = "tiny-bert-cross-encoder"
GENERATOR = "tiny-llama"
DECODER_EMBEDDER = "tiny-qwen2-embed"
SEED_TEXTS = [
    "The food was delicious and the waiter was very friendly.",
    "A man is playing a guitar on the street.",
    "Paris is the capital and most populous city of France.",
]


@pytest.fixture(scope="module")
def pooling_server(server_factory):
    from mono_llm.core import AsyncEngineArgs
    from mono_llm.openai_api import build_app

    engines = [
        AsyncEngineArgs(model=str(minilm_path()), served_model_name=MINILM),
        AsyncEngineArgs(model=str(fixture_path(CLASSIFIER)), served_model_name=CLASSIFIER),
        AsyncEngineArgs(model=str(fixture_path(CROSS_ENCODER)), served_model_name=CROSS_ENCODER),
        AsyncEngineArgs(model=str(fixture_path(GENERATOR)), served_model_name=GENERATOR),
        AsyncEngineArgs(
            model=str(fixture_path("tiny-qwen2")), served_model_name=DECODER_EMBEDDER, task="embed"
        ),
    ]
    with server_factory(build_app(engines)) as running:
        yield running


@pytest.fixture(scope="module")
def client(pooling_server):
    return pooling_server.openai()


@pytest.fixture(scope="module")
def sentence_transformer():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path()), device="cpu")


def _post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", json=body, timeout=60)


def _cosines(a, b) -> list[float]:
    return torch.nn.functional.cosine_similarity(
        torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)
    ).tolist()


def test_embeddings_one_input_and_a_batch_match_sentence_transformers(client, sentence_transformer):
    one = client.embeddings.create(model=MINILM, input=SEED_TEXTS[0])
    assert len(one.data) == 1 and len(one.data[0].embedding) == 384
    reference = sentence_transformer.encode(SEED_TEXTS[:1])
    assert min(_cosines([one.data[0].embedding], reference)) >= 0.9999
    assert one.model == MINILM and one.object == "list"
    tokens = len(sentence_transformer.tokenizer(SEED_TEXTS[0]).input_ids)
    assert one.usage.prompt_tokens == tokens == one.usage.total_tokens

    batch = client.embeddings.create(model=MINILM, input=SEED_TEXTS, encoding_format="float")
    assert [d.index for d in batch.data] == [0, 1, 2]
    reference = sentence_transformer.encode(SEED_TEXTS)
    assert min(_cosines([d.embedding for d in batch.data], reference)) >= 0.9999


def test_base64_equals_float(pooling_server):
    def both(inputs):
        body = {"model": MINILM, "input": inputs}
        floats = _post(pooling_server, "/v1/embeddings", {**body, "encoding_format": "float"})
        encoded = _post(pooling_server, "/v1/embeddings", {**body, "encoding_format": "base64"})
        pairs = zip(floats.json()["data"], encoded.json()["data"], strict=True)
        return [
            (f["embedding"], np.frombuffer(base64.b64decode(e["embedding"]), dtype="<f4").tolist())
            for f, e in pairs
        ]

    # One input runs alone in its step both times: bit-identical.
    [(as_float, decoded)] = both(SEED_TEXTS[0])
    assert decoded == as_float
    # A batch may be split over steps differently by the two requests (continuous batching
    # changes the padding of the encoder's attention), so compare at float32 rounding level.
    for as_float, decoded in both(SEED_TEXTS[:2]):
        assert decoded == pytest.approx(as_float, abs=1e-6)


def test_token_id_inputs(client, sentence_transformer):
    ids = [sentence_transformer.tokenizer(t).input_ids for t in SEED_TEXTS[:2]]
    texts = client.embeddings.create(model=MINILM, input=SEED_TEXTS[:2])
    by_ids = client.embeddings.create(model=MINILM, input=ids)
    single = client.embeddings.create(model=MINILM, input=ids[0])
    for a, b in zip(texts.data, by_ids.data, strict=True):
        assert a.embedding == pytest.approx(b.embedding, abs=1e-6)
    assert single.data[0].embedding == pytest.approx(texts.data[0].embedding, abs=1e-6)


def test_embedding_errors_are_clear_400s(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=GENERATOR, input="hello")
    assert "does not support the 'embed' task" in str(info.value)
    assert "supports: generate" in str(info.value)
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=MINILM, input="hello", dimensions=64)
    assert info.value.body["param"] == "dimensions"
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=MINILM, input=[])


def test_pooling_returns_the_raw_pooled_state(pooling_server, client):
    raw = _post(pooling_server, "/pooling", {"model": MINILM, "input": SEED_TEXTS[0]}).json()
    assert raw["data"][0]["object"] == "pooling"
    vector = torch.tensor(raw["data"][0]["data"])
    embedded = client.embeddings.create(model=MINILM, input=SEED_TEXTS[0]).data[0].embedding
    assert abs(vector.norm().item() - 1) > 1e-3
    assert (vector / vector.norm()).tolist() == pytest.approx(embedded, abs=1e-5)


def test_classify_matches_transformers(pooling_server):
    path = fixture_path(CLASSIFIER)
    response = _post(pooling_server, "/classify", {"model": CLASSIFIER, "input": SEED_TEXTS})
    assert response.status_code == 200, response.text
    body = response.json()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(path).eval()
    for text, item in zip(SEED_TEXTS, body["data"], strict=True):
        with torch.no_grad():
            probs = hf(**tokenizer(text, return_tensors="pt")).logits[0].softmax(-1)
        assert item["probs"] == pytest.approx(probs.tolist(), abs=1e-5)
        assert item["num_classes"] == 3
        assert item["label"] == hf.config.id2label[int(probs.argmax())]
    assert body["usage"]["prompt_tokens"] == sum(len(tokenizer(t).input_ids) for t in SEED_TEXTS)
    wrong = _post(pooling_server, "/classify", {"model": MINILM, "input": "hi"})
    assert wrong.status_code == 400
    assert "supports: embed, encode, score" in wrong.json()["error"]["message"]


def _cross_encoder_reference(queries: list[str], documents: list[str]) -> list[float]:
    path = fixture_path(CROSS_ENCODER)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        batch = tokenizer(queries, documents, padding=True, return_tensors="pt")
        return hf(**batch).logits.sigmoid().flatten().tolist()


@pytest.mark.parametrize(
    ("first", "second"), [("text_1", "text_2"), ("queries", "documents"), ("data_1", "data_2"),
                          ("queries", "items")]
)  # fmt: skip
def test_score_shapes_match_transformers(pooling_server, first, second):
    queries = ["what is the capital of France", "who plays the guitar"]
    documents = SEED_TEXTS[:2]
    pairwise = _post(
        pooling_server, "/score", {"model": CROSS_ENCODER, first: queries, second: documents}
    ).json()
    assert [d["score"] for d in pairwise["data"]] == pytest.approx(
        _cross_encoder_reference(queries, documents), abs=1e-5
    )
    one_to_many = _post(
        pooling_server, "/score", {"model": CROSS_ENCODER, first: queries[0], second: documents}
    ).json()
    assert [d["object"] for d in one_to_many["data"]] == ["score", "score"]
    assert [d["score"] for d in one_to_many["data"]] == pytest.approx(
        _cross_encoder_reference([queries[0]] * 2, documents), abs=1e-5
    )
    one = _post(
        pooling_server, "/score", {"model": CROSS_ENCODER, first: queries[0], second: documents[0]}
    ).json()
    assert len(one["data"]) == 1


def test_score_errors(pooling_server):
    bad = _post(
        pooling_server,
        "/score",
        {"model": CROSS_ENCODER, "text_1": ["a", "b"], "text_2": ["c", "d", "e"]},
    )
    assert bad.status_code == 400 and "equally long" in bad.json()["error"]["message"]
    both = _post(
        pooling_server, "/score", {"model": CROSS_ENCODER, "text_1": "a", "queries": "b",
                                   "text_2": "c"}
    )  # fmt: skip
    assert both.status_code == 400
    generator = _post(pooling_server, "/score", {"model": GENERATOR, "text_1": "a", "text_2": "b"})
    assert generator.status_code == 400 and "supports: generate" in generator.text


def test_embedding_model_scores_by_cosine(pooling_server, sentence_transformer):
    body = {"model": MINILM, "text_1": SEED_TEXTS[0], "text_2": SEED_TEXTS[1:]}
    response = _post(pooling_server, "/score", body).json()
    scores = [d["score"] for d in response["data"]]
    vectors = sentence_transformer.encode(SEED_TEXTS)
    assert scores == pytest.approx([float(vectors[0] @ vectors[i]) for i in (1, 2)], abs=1e-4)
    # The query is embedded once for both documents, and usage counts what ran.
    lengths = [len(sentence_transformer.tokenizer(t).input_ids) for t in SEED_TEXTS]
    assert response["usage"]["prompt_tokens"] == sum(lengths)


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank", "/v2/rerank"])
def test_rerank_order_and_top_n(pooling_server, path):
    query = "what is the capital of France"
    documents = [SEED_TEXTS[0], SEED_TEXTS[2], SEED_TEXTS[1], "Berlin is in Germany."]
    expected = _cross_encoder_reference([query] * 4, documents)
    order = sorted(range(4), key=lambda i: expected[i], reverse=True)
    body = {"model": CROSS_ENCODER, "query": query, "documents": documents}
    full = _post(pooling_server, path, body).json()
    assert [r["index"] for r in full["results"]] == order
    assert [r["relevance_score"] for r in full["results"]] == pytest.approx(
        [expected[i] for i in order], abs=1e-5
    )
    assert full["results"][0]["document"]["text"] == documents[order[0]]
    assert full["usage"]["total_tokens"] > 0
    top = _post(pooling_server, path, {**body, "top_n": 2, "return_documents": False}).json()
    assert [r["index"] for r in top["results"]] == order[:2]
    assert all(r.get("document") is None for r in top["results"])
    if path == "/v2/rerank":
        assert full["meta"]["api_version"]["version"] == "2"
    cohere_docs = _post(
        pooling_server, path, {**body, "documents": [{"text": d} for d in documents]}
    ).json()
    assert [r["index"] for r in cohere_docs["results"]] == order


def test_chat_messages_form_of_embeddings(pooling_server):
    """`messages` are rendered with the model's chat template (vLLM's EmbeddingChatRequest)."""
    messages = [{"role": "user", "content": "Represent this sentence: a guitar on the street"}]
    chat = _post(
        pooling_server, "/v1/embeddings", {"model": DECODER_EMBEDDER, "messages": messages}
    )
    assert chat.status_code == 200, chat.text
    tokenizer = transformers.AutoTokenizer.from_pretrained(fixture_path("tiny-qwen2"))
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    by_ids = _post(pooling_server, "/v1/embeddings", {"model": DECODER_EMBEDDER, "input": ids})
    assert chat.json()["data"][0]["embedding"] == pytest.approx(
        by_ids.json()["data"][0]["embedding"], abs=1e-6
    )
    assert chat.json()["usage"]["prompt_tokens"] == len(ids)
    no_template = _post(pooling_server, "/v1/embeddings", {"model": MINILM, "messages": messages})
    assert no_template.status_code == 400 and "chat template" in no_template.text
    both = _post(
        pooling_server, "/v1/embeddings", {"model": MINILM, "messages": messages, "input": "x"}
    )
    assert both.status_code == 400


def test_pooling_requests_are_counted_in_metrics(pooling_server, client):
    def success() -> float:
        text = httpx.get(f"{pooling_server.base_url}/metrics", timeout=30).text
        labels = f'finished_reason="stop",model_name="{MINILM}"'
        key = "vllm:request_success_total{" + labels + "}"
        for line in text.splitlines():
            if line.startswith(key):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = success()
    client.embeddings.create(model=MINILM, input=SEED_TEXTS)
    assert success() == before + 3
