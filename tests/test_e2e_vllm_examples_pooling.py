"""vLLM's documented pooling examples, run as written against one live server.

Sources (vllm-project/vllm): examples/pooling/embed/{openai_embedding_client,
openai_embedding_matryoshka_fy_client, embedding_requests_base64_client}.py,
examples/pooling/pooling/openai_pooling_client.py,
examples/pooling/classify/openai_classification_client.py,
examples/pooling/score/{openai_cross_encoder_score, jinaai_rerank_client,
cohere_rerank_client}.py and the curl requests of docs/serving/openai_compatible_server.md.
The examples use `requests`; httpx posts the same JSON. The Cohere SDK is not installed, so
its v1 and v2 rerank calls are sent as the JSON that SDK sends.

The server serves all-MiniLM-L6-v2 (embeddings), the same weights declared Matryoshka (as
jina-embeddings-v3 is, for `dimensions`), the tiny BERT classifier and cross-encoder, and
tiny-qwen2 with `--runner pooling` (it has a chat template, for the `messages` form).
"""

from __future__ import annotations

import base64
import json
import shutil

import httpx
import numpy as np
import pytest
import torch
from openai import OpenAI

from mono_llm.core.testing import fixture_path, minilm_path

EMBEDDER = "all-MiniLM-L6-v2"
MATRYOSHKA = "minilm-matryoshka"
CLASSIFIER = "tiny-bert-classifier"
RERANKER = "tiny-bert-cross-encoder"
CHAT_EMBEDDER = "tiny-qwen2-embed"
LM_RERANKER = "tiny-qwen3-reranker"


def _no_yes_tokens() -> tuple[list[str], list[int]]:
    """Two single-token words of tiny-qwen3's vocabulary, playing Qwen3-Reranker's "no" and
    "yes" (the tiny tokenizer has neither)."""
    import transformers

    vocab = transformers.AutoTokenizer.from_pretrained(fixture_path("tiny-qwen3")).get_vocab()
    names = sorted(t for t in vocab if t.isalpha() and len(t) > 2)[:2]
    return names, [vocab[n] for n in names]


@pytest.fixture(scope="module")
def pooling(server_factory, tmp_path_factory):
    from mono_llm.core import AsyncEngineArgs
    from mono_llm.openai_api import build_app

    matryoshka = tmp_path_factory.mktemp("matryoshka")
    for item in minilm_path().iterdir():
        if item.name != "config.json":
            (matryoshka / item.name).symlink_to(item)
    config = json.loads((minilm_path() / "config.json").read_text())
    (matryoshka / "config.json").write_text(json.dumps({**config, "is_matryoshka": True}))
    engines = [
        AsyncEngineArgs(model=str(minilm_path()), served_model_name=EMBEDDER),
        AsyncEngineArgs(model=str(matryoshka), served_model_name=MATRYOSHKA),
        AsyncEngineArgs(model=str(fixture_path(CLASSIFIER)), served_model_name=CLASSIFIER),
        AsyncEngineArgs(model=str(fixture_path(RERANKER)), served_model_name=RERANKER),
        AsyncEngineArgs(
            model=str(fixture_path("tiny-qwen2")), served_model_name=CHAT_EMBEDDER, runner="pooling"
        ),
        # The documented Qwen3-Reranker recipe: a causal LM, served as a classifier.
        AsyncEngineArgs(
            model=str(fixture_path("tiny-qwen3")),
            served_model_name=LM_RERANKER,
            runner="pooling",
            hf_overrides={
                "architectures": ["Qwen3ForSequenceClassification"],
                "classifier_from_token": _no_yes_tokens()[0],
                "is_original_qwen3_reranker": True,
            },
        ),
    ]
    with server_factory(build_app(engines)) as running:
        yield running
    shutil.rmtree(matryoshka, ignore_errors=True)


@pytest.fixture(scope="module")
def openai_api_base(pooling) -> str:
    return pooling.v1


def _post(pooling, path: str, payload: dict) -> httpx.Response:
    headers = {"User-Agent": "Test Client"}
    return httpx.post(f"{pooling.base_url}{path}", headers=headers, json=payload, timeout=60)


def test_openai_embedding_client(openai_api_base) -> None:
    client = OpenAI(
        # defaults to os.environ.get("OPENAI_API_KEY")
        api_key="EMPTY",
        base_url=openai_api_base,
        timeout=60.0,
        max_retries=3,
    )

    models = client.models.list()
    model = models.data[0].id

    responses = client.embeddings.create(
        input=[
            "Hello my name is",
            "The best thing about vLLM is that it supports many different models",
        ],
        model=model,
    )

    for data in responses.data:
        print(data.embedding)  # List of float of len 384
    assert responses.object == "list" and responses.model == EMBEDDER
    assert [d.index for d in responses.data] == [0, 1]
    assert all(d.object == "embedding" and len(d.embedding) == 384 for d in responses.data)
    assert np.isclose(np.linalg.norm(responses.data[0].embedding), 1.0, atol=1e-4)
    assert responses.usage.prompt_tokens == responses.usage.total_tokens > 0
    floats = client.embeddings.create(input="x", model=model, encoding_format="float", user="u")
    assert len(floats.data[0].embedding) == 384


def test_openai_embedding_matryoshka_client(openai_api_base) -> None:
    client = OpenAI(api_key="EMPTY", base_url=openai_api_base)
    responses = client.embeddings.create(
        input=["Follow the white rabbit."], model=MATRYOSHKA, dimensions=32
    )
    for data in responses.data:
        print(data.embedding)  # List of float of len 32
    assert len(responses.data[0].embedding) == 32
    full = client.embeddings.create(input=["Follow the white rabbit."], model=MATRYOSHKA)
    head = np.array(full.data[0].embedding[:32])
    assert np.allclose(responses.data[0].embedding, head / np.linalg.norm(head), atol=1e-4)
    # A model that is not Matryoshka refuses `dimensions`, as vLLM does.
    refused = httpx.post(
        f"{openai_api_base}/embeddings",
        json={"model": EMBEDDER, "input": "x", "dimensions": 32},
    )
    assert refused.status_code == 400 and "matryoshka" in refused.json()["error"]["message"]


def _decode(binary: bytes, embed_dtype: str, endianness: str) -> torch.Tensor:
    """What vLLM's binary2tensor does on the client side."""
    order = {"native": "=", "little": "<", "big": ">"}[endianness]
    width = {"float32": "i4", "float16": "i2", "bfloat16": "i2"}.get(embed_dtype, "u1")
    ints = np.frombuffer(binary, dtype=np.dtype(order + width)).astype(np.dtype("=" + width))
    torch_dtype = {"float32": torch.float32, "float16": torch.float16,
                   "bfloat16": torch.bfloat16, "fp8_e4m3": torch.float8_e4m3fn,
                   "fp8_e5m2": torch.float8_e5m2}[embed_dtype]  # fmt: skip
    return torch.from_numpy(ints.copy()).view(torch_dtype).to(torch.float32)


def test_embedding_requests_base64_client(pooling) -> None:
    floats = _post(pooling, "/v1/embeddings", {"model": EMBEDDER, "input": "vLLM is great!"})
    reference = torch.tensor(floats.json()["data"][0]["embedding"])
    for embed_dtype in ("float32", "float16", "bfloat16", "fp8_e4m3", "fp8_e5m2"):
        for endianness in ("native", "big", "little"):
            prompt = {
                "model": EMBEDDER,
                "input": "vLLM is great!",
                "encoding_format": "base64",
                "embed_dtype": embed_dtype,
                "endianness": endianness,
            }
            response = _post(pooling, "/v1/embeddings", prompt)
            embedding = []
            for data in response.json()["data"]:
                binary = base64.b64decode(data["embedding"])
                embedding.append(_decode(binary, embed_dtype, endianness))
            embedding = torch.cat(embedding)
            assert embedding.shape == (384,)
            tolerance = 1e-6 if embed_dtype == "float32" else 0.02 if "16" in embed_dtype else 0.1
            assert torch.allclose(embedding, reference, atol=tolerance), (embed_dtype, endianness)


def test_openai_pooling_client(pooling) -> None:
    # Input like Completions API
    prompt = {"model": EMBEDDER, "input": "vLLM is great!"}
    pooling_response = _post(pooling, "/pooling", prompt)
    body = pooling_response.json()
    assert body["object"] == "list" and body["id"].startswith("pool-")
    assert body["data"][0]["object"] == "pooling" and len(body["data"][0]["data"]) == 384

    # Input like Chat API
    prompt = {
        "model": CHAT_EMBEDDER,
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "vLLM is great!"}],
            }
        ],
    }
    pooling_response = _post(pooling, "/pooling", prompt)
    assert pooling_response.status_code == 200, pooling_response.text
    assert pooling_response.json()["usage"]["prompt_tokens"] > 3
    # The embeddings endpoint takes the same chat form (docs: "Embeddings API").
    chat = _post(pooling, "/v1/embeddings", {**prompt, "encoding_format": "float"})
    assert chat.status_code == 200 and chat.json()["data"][0]["object"] == "embedding"


def test_openai_classification_client(pooling) -> None:
    prompts = [
        "Hello, my name is",
        "The president of the United States is",
        "The capital of France is",
        "The future of AI is",
    ]
    payload = {"model": CLASSIFIER, "input": prompts}
    body = _post(pooling, "/classify", payload).json()
    assert body["id"].startswith("classify-") and body["object"] == "list"
    assert [d["index"] for d in body["data"]] == [0, 1, 2, 3]
    for item in body["data"]:
        assert set(item) == {"index", "label", "probs", "num_classes"}
        assert item["num_classes"] == 3 and abs(sum(item["probs"]) - 1) < 1e-4
        assert item["label"] in ("negative", "neutral", "positive")
    usage = body["usage"]
    assert usage["completion_tokens"] == 0 and usage["prompt_tokens"] == usage["total_tokens"]
    # docs curl: a single string as input.
    single = _post(pooling, "/classify", {"model": CLASSIFIER, "input": "Loved the new café."})
    assert len(single.json()["data"]) == 1


def test_openai_cross_encoder_score(pooling) -> None:
    cases = [
        ("What is the capital of Brazil?", "The capital of Brazil is Brasilia.", 1),
        (
            "What is the capital of France?",
            ["The capital of Brazil is Brasilia.", "The capital of France is Paris."],
            2,
        ),
        (
            ["What is the capital of Brazil?", "What is the capital of France?"],
            ["The capital of Brazil is Brasilia.", "The capital of France is Paris."],
            2,
        ),
    ]
    for text_1, text_2, pairs in cases:
        prompt = {"model": RERANKER, "text_1": text_1, "text_2": text_2}
        score_response = _post(pooling, "/score", prompt)
        body = score_response.json()
        assert body["id"].startswith("score-") and body["object"] == "list"
        assert [d["index"] for d in body["data"]] == list(range(pairs))
        assert all(d["object"] == "score" and 0 <= d["score"] <= 1 for d in body["data"])
    # docs curl: `encoding_format` is accepted too.
    curl = _post(pooling, "/score", {**prompt, "encoding_format": "float"})
    assert curl.status_code == 200


def test_jinaai_rerank_client(pooling) -> None:
    data = {
        "model": RERANKER,
        "query": "What is the capital of France?",
        "documents": [
            "The capital of Brazil is Brasilia.",
            "The capital of France is Paris.",
            "Horses and cows are both animals",
        ],
    }
    for path in ("/rerank", "/v1/rerank"):
        headers = {"accept": "application/json", "Content-Type": "application/json"}
        response = httpx.post(f"{pooling.base_url}{path}", headers=headers, json=data)
        assert response.status_code == 200
        body = response.json()
        assert body["id"].startswith("rerank-") and body["model"] == RERANKER
        assert body["usage"]["total_tokens"] > 0
        results = body["results"]
        assert sorted(r["index"] for r in results) == [0, 1, 2]
        scores = [r["relevance_score"] for r in results]
        assert scores == sorted(scores, reverse=True)
        for r in results:
            assert r["document"] == {"text": data["documents"][r["index"]]}


def test_cohere_rerank_client_v1_and_v2(pooling) -> None:
    # What cohere.Client(...).rerank and cohere.ClientV2(...).rerank send (the SDK is not
    # installed here): POST /v1/rerank and /v2/rerank with these bodies.
    documents = [
        "The capital of France is Paris",
        "Reranking is fun!",
        "vLLM is an open-source framework for fast AI serving",
    ]
    body = {"model": RERANKER, "query": "What is the capital of France?", "documents": documents}
    headers = {"Authorization": "Bearer sk-fake-key"}
    v1 = httpx.post(f"{pooling.base_url}/v1/rerank", headers=headers, json=body).json()
    v2 = httpx.post(
        f"{pooling.base_url}/v2/rerank", headers=headers, json={**body, "top_n": 2}
    ).json()
    assert [r["index"] for r in v1["results"]][:2] == [r["index"] for r in v2["results"]]
    assert all(isinstance(r["relevance_score"], float) for r in v2["results"])
    assert v2["meta"]["api_version"]["version"] == "2"
    assert v2["meta"]["billed_units"]["search_units"] == 1


def test_generation_routes_on_a_pooling_model_name_the_tasks(openai_api_base) -> None:
    import openai

    client = OpenAI(api_key="EMPTY", base_url=openai_api_base)
    for call in (
        lambda: client.chat.completions.create(
            model=EMBEDDER, messages=[{"role": "user", "content": "Hello!"}]
        ),
        lambda: client.completions.create(model=EMBEDDER, prompt="Hello"),
    ):
        with pytest.raises(openai.BadRequestError) as info:
            call()
        assert "does not support the 'generate' task; it supports: embed" in info.value.message


def test_qwen3_reranker_recipe_scores_the_yes_no_margin(pooling) -> None:
    """`--hf-overrides '{"architectures": ["Qwen3ForSequenceClassification"],
    "classifier_from_token": ["no", "yes"], "is_original_qwen3_reranker": true}'`: /rerank
    scores are sigmoid(logit(yes) - logit(no)) of the causal LM, as transformers computes."""
    import transformers

    query = "What is the capital of France?"
    documents = ["The capital of France is Paris.", "Horses and cows are both animals"]
    response = _post(pooling, "/rerank", {"model": LM_RERANKER, "query": query,
                                          "documents": documents})  # fmt: skip
    assert response.status_code == 200, response.text
    scores = {r["index"]: r["relevance_score"] for r in response.json()["results"]}
    path = fixture_path("tiny-qwen3")
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    _, (no, yes) = _no_yes_tokens()
    for index, document in enumerate(documents):
        with torch.no_grad():
            logits = model(tokenizer(query, document, return_tensors="pt").input_ids).logits
        expected = torch.sigmoid(logits[0, -1, yes] - logits[0, -1, no]).item()
        assert scores[index] == pytest.approx(expected, abs=1e-4)
