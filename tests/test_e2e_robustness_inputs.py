"""End to end: hostile input on every endpoint of one live server gets a clear OpenAI-shaped
error with the right status (400 naming the field, 404, 405), never a 500, a hang, a dropped
connection or a stack trace; and the server still serves afterwards.

The server (one per module) serves tiny-llama with a 64-token window (generation), the tiny
BERT cross-encoder (classify / score / rerank) and tiny-qwen2 as an embedder.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from mono_llm.core import AsyncEngineArgs
from mono_llm.core.testing import fixture_path

GEN, CROSS, EMB = "gen", "cross", "emb"
WINDOW = 64
LEAK = re.compile(r"Traceback|File \"|\.py\b|site-packages")


@pytest.fixture(scope="module")
def base_url(server_factory):
    from mono_llm.openai_api import ServerArgs, build_app

    engines = [
        AsyncEngineArgs(model=str(fixture_path("tiny-llama")), served_model_name=GEN,
                        max_model_len=WINDOW, max_num_seqs=8),
        AsyncEngineArgs(model=str(fixture_path("tiny-bert-cross-encoder")),
                        served_model_name=CROSS),
        AsyncEngineArgs(model=str(fixture_path("tiny-qwen2")), served_model_name=EMB,
                        task="embed", max_model_len=WINDOW),
    ]  # fmt: skip
    # Trusted request templates: the template tests below exercise the sandboxed worker.
    args = ServerArgs(trust_request_chat_template=True)
    with server_factory(build_app(engines, args)) as running:
        yield running.base_url


@pytest.fixture(scope="module")
def http(base_url):
    # One keep-alive connection for the whole module: a server that dropped it after an
    # error would fail the next test with "connection reset".
    with httpx.Client(base_url=base_url, timeout=30) as client:
        yield client


def assert_error(response: httpx.Response, status: int, param: str | None = "any") -> dict:
    """An OpenAI error body with `status`, no stack trace; returns the error object."""
    assert response.status_code == status, response.text
    assert not LEAK.search(response.text), response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["code"] == status and error["message"]
    if param != "any":
        assert error["param"] == param, error
    return error


def post_raw(http: httpx.Client, path: str, body: bytes, content_type: str | None) -> Any:
    headers = {"content-type": content_type} if content_type else {}
    return http.post(path, content=body, headers=headers)


def post(http: httpx.Client, path: str, body: Any) -> httpx.Response:
    # json.dumps writes NaN/Infinity and \\ud800 escapes, as a hostile client can.
    return post_raw(http, path, json.dumps(body).encode(), "application/json")


ENDPOINTS = ["/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/pooling",
             "/classify", "/score", "/rerank", "/v1/rerank", "/v2/rerank", "/tokenize",
             "/detokenize"]  # fmt: skip
BAD_BODIES = [
    (b"{not json", "application/json"),
    (b"[1, 2]", "application/json"),
    (b'"a string"', "application/json"),
    (b"null", "application/json"),
    (b"", "application/json"),
    (b'{"model": "gen"}', "text/plain"),
    (b"\xff\xfe{}", "application/json"),
    (b"1e999", None),
]


@pytest.mark.parametrize("path", ENDPOINTS)
def test_malformed_and_non_object_bodies_are_400s(http, path) -> None:
    for body, content_type in BAD_BODIES:
        assert_error(post_raw(http, path, body, content_type), 400)
    error = assert_error(post_raw(http, path, b'{"a": ', "application/json"), 400, "body")
    assert "not valid JSON" in error["message"]


@pytest.mark.parametrize("path", ENDPOINTS)
def test_lone_surrogates_are_400s_naming_the_field(http, path) -> None:
    field = {"/v1/chat/completions": "messages", "/detokenize": "model", "/score": "text_1",
             "/rerank": "query", "/v1/rerank": "query", "/v2/rerank": "query"}.get(path, "prompt")  # fmt: skip
    value: Any = [{"role": "user", "content": "\ud800"}] if field == "messages" else "a\udc00"
    error = assert_error(post(http, path, {"model": GEN, "input": "x", field: value}), 400)
    expected = "messages.0.content" if field == "messages" else field
    assert error["param"] == expected


COMPLETION = {"model": GEN, "prompt": "hello", "max_tokens": 2}
BAD_FIELDS = [
    ("max_tokens", -1), ("max_tokens", 0), ("max_tokens", "many"), ("max_tokens", 10**30),
    ("n", 0), ("n", 10**6), ("n", 10**12), ("n", None), ("best_of", 10**6),
    ("logprobs", -1), ("logprobs", 21), ("prompt_logprobs", 10**6),
    ("temperature", float("nan")), ("temperature", float("inf")), ("temperature", -1),
    ("top_p", float("nan")), ("top_p", 0), ("top_k", -2), ("min_p", 2),
    ("presence_penalty", float("-inf")), ("repetition_penalty", float("nan")),
    ("seed", 2**63), ("seed", -(2**63) - 1), ("seed", 10**30),
    ("stop", [""]), ("stop", 5), ("stop_token_ids", [-1]), ("stop_token_ids", [10**9]),
    ("logit_bias", {"-1": 1}), ("logit_bias", {"99999999": 1}), ("logit_bias", {"a": 1}),
    ("logit_bias", {"5": float("nan")}), ("allowed_token_ids", []), ("allowed_token_ids", [-3]),
    ("min_tokens", -1), ("truncate_prompt_tokens", -2), ("truncate_prompt_tokens", 0),
    ("truncate_prompt_tokens", WINDOW + 1), ("echo", "maybe"), ("suffix", "x"),
    ("stream_options", {"include_usage": True}), ("structured_outputs", {"regex": "(("}),
    ("structured_outputs", {"json": {"type": "no-such-type"}}), ("guided_json", "{bad"),
    ("structured_outputs", {"choice": []}), ("structured_outputs", {"grammar": "??"}),
    ("structured_outputs", {"nope": 1}), ("response_format", {"type": "json_schema"}),
]  # fmt: skip


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS, ids=lambda v: str(v)[:20])
def test_bad_sampling_fields_are_400s_naming_the_field(http, field, value) -> None:
    error = assert_error(post(http, "/v1/completions", {**COMPLETION, field: value}), 400)
    assert error["param"].split(".")[0] in (field, "structured_outputs"), error


@pytest.mark.parametrize(
    "prompt",
    [[], [[]], [[], [1]], [-1], [10**9], [2**70], [1.5], [None], {"a": 1}, ["a", 1]],
    ids=str,
)
def test_bad_prompts_are_400s(http, prompt) -> None:
    assert_error(post(http, "/v1/completions", {**COMPLETION, "prompt": prompt}), 400, "prompt")


def test_context_window_edges_as_vllm_words_them(http) -> None:
    # WINDOW - 1 prompt tokens leave room for exactly one new token.
    room_for_one = post(http, "/v1/completions", {**COMPLETION, "prompt": [1] * (WINDOW - 1),
                                                  "max_tokens": 1})  # fmt: skip
    assert room_for_one.status_code == 200, room_for_one.text
    full = post(http, "/v1/completions", {**COMPLETION, "prompt": [1] * WINDOW})
    error = assert_error(full, 400, "prompt")
    assert f"maximum context length is {WINDOW} tokens" in error["message"]
    assert f"{WINDOW} input tokens" in error["message"]
    too_many = post(http, "/v1/completions", {**COMPLETION, "prompt": [1] * 60, "max_tokens": 10})
    error = assert_error(too_many, 400, "max_tokens")
    assert error["message"] == (
        "'max_tokens' or 'max_completion_tokens' is too large: 10. This model's maximum "
        "context length is 64 tokens and your request has 60 input tokens (10 > 64 - 60)."
    )  # vLLM's words
    # Truncation to the window keeps the last WINDOW tokens: then the prompt fills it.
    truncated = post(http, "/v1/completions", {**COMPLETION, "prompt": [1] * 200,
                                               "truncate_prompt_tokens": 8})  # fmt: skip
    assert truncated.status_code == 200 and truncated.json()["usage"]["prompt_tokens"] == 8


CHAT = {"model": GEN, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
BAD_CHAT = [
    ("messages", [], "messages"), ("messages", "hi", "messages"), ("messages", [{}], None),
    ("messages", [5], "messages.0"), ("messages", [{"role": "user", "content": 5}], None),
    ("messages", [{"role": "user", "content": [{"type": "text"}]}], "messages.0.content.0.text"),
    ("messages", [{"role": "user", "content": [{"type": "text", "text": 5}]}], None),
    ("messages", [{"role": "user", "content": [{"type": "weird"}]}], "messages.0.content"),
    ("messages", [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "data:image/png;base64,AAAA"}}]}], "messages.0.content"),
    ("messages", [{"role": "user", "content": [{"type": "input_audio", "input_audio": {
        "data": "AAAA", "format": "wav"}}]}], "messages.0.content"),
    ("messages", [{"role": "user", "content": "hi " * 100}], "messages"),
    ("max_completion_tokens", 10**6, "max_completion_tokens"), ("top_logprobs", 3, None),
    ("tools", "x", "tools"), ("tools", [{}], None), ("tools", [{"type": "function"}], None),
    ("tools", [{"type": "function", "function": {}}], None), ("tool_choice", 5, None),
    ("tool_choice", "required", None), ("chat_template_kwargs", "x", "chat_template_kwargs"),
    ("chat_template", "{{ raise_exception('boom from the template') }}", "chat_template"),
    ("chat_template", "{% for %}", "chat_template"), ("chat_template", "{{ 1 / 0 }}", None),
    ("chat_template", "{{ nothing.there.at_all }}", None), ("n", 10**6, "n"),
    ("temperature", float("nan"), "temperature"), ("continue_final_message", True, None),
]  # fmt: skip


@pytest.mark.parametrize(("field", "value", "param"), BAD_CHAT, ids=lambda v: str(v)[:24])
def test_bad_chat_requests_are_400s(http, field, value, param) -> None:
    for stream in (False, True):
        body = {**CHAT, field: value, "stream": stream}
        error = assert_error(post(http, "/v1/chat/completions", body), 400)
        if param is not None:
            assert error["param"] == param, error


def test_streaming_with_best_of_above_n_is_refused(http) -> None:
    for path, body in (("/v1/completions", COMPLETION), ("/v1/chat/completions", CHAT)):
        streamed = post(http, path, {**body, "best_of": 3, "n": 1, "stream": True})
        assert_error(streamed, 400, "best_of")
        assert post(http, path, {**body, "best_of": 3, "n": 1}).status_code == 200


def test_structured_output_errors_carry_the_reason_only(http) -> None:
    body = {**COMPLETION, "structured_outputs": {"json": {"type": "no-such-type"}}}
    error = assert_error(post(http, "/v1/completions", body), 400, "structured_outputs")
    assert error["message"] == (
        'Invalid json for structured outputs: Unsupported type "no-such-type"'
    )  # no "[hh:mm:ss] /project/cpp/...cc:N:" prefix from xgrammar


def test_a_raising_chat_template_reports_its_own_message(http) -> None:
    body = {**CHAT, "chat_template": "{{ raise_exception('roles must alternate') }}"}
    error = assert_error(post(http, "/v1/chat/completions", body), 400, "chat_template")
    assert "roles must alternate" in error["message"]


BAD_POOLING = [
    ("/v1/embeddings", {"model": EMB, "input": ""}, "input"),
    ("/v1/embeddings", {"model": EMB, "input": []}, "input"),
    ("/v1/embeddings", {"model": EMB, "input": [[]]}, "input"),
    ("/v1/embeddings", {"model": EMB, "input": [-1]}, "input"),
    ("/v1/embeddings", {"model": EMB, "input": [[1] * 100]}, "input"),
    ("/v1/embeddings", {"model": EMB, "input": 5}, None),
    ("/v1/embeddings", {"model": EMB, "input": "x", "dimensions": 0}, "dimensions"),
    ("/v1/embeddings", {"model": EMB, "input": "x", "encoding_format": "hex"}, None),
    ("/v1/embeddings", {"model": GEN, "input": "x"}, "model"),
    ("/pooling", {"model": EMB, "input": [10**9]}, "input"),
    ("/classify", {"model": CROSS, "input": []}, "input"),
    ("/classify", {"model": GEN, "input": "x"}, "model"),
    ("/score", {"model": CROSS, "text_1": "a", "text_2": []}, "text_2"),
    ("/score", {"model": CROSS, "text_1": ["a", "b"], "text_2": ["a", "b", "c"]}, "text_1"),
    ("/score", {"model": CROSS}, None),
    ("/rerank", {"model": CROSS, "query": "a", "documents": []}, "documents"),
    ("/v1/rerank", {"model": CROSS, "query": None, "documents": ["b"]}, "query"),
    ("/v2/rerank", {"model": GEN, "query": "a", "documents": ["b"]}, "model"),
    ("/tokenize", {"model": GEN, "messages": []}, "messages"),
    ("/tokenize", {"model": GEN, "prompt": 5}, None),
    ("/detokenize", {"model": GEN, "tokens": [-1]}, "tokens"),
    ("/detokenize", {"model": GEN, "tokens": [2**70]}, "tokens"),
    ("/detokenize", {"model": GEN, "tokens": "x"}, "tokens"),
]


@pytest.mark.parametrize(("path", "body", "param"), BAD_POOLING, ids=lambda v: str(v)[:30])
def test_bad_pooling_and_tokenizer_requests_are_400s(http, path, body, param) -> None:
    error = assert_error(post(http, path, body), 400)
    if param is not None:
        assert error["param"] == param, error


def test_unknown_model_route_and_method(http) -> None:
    for path in ("/v1/completions", "/v1/chat/completions", "/classify"):
        body = {"model": "no-such-model", "prompt": "x", "input": "x",
                "messages": [{"role": "user", "content": "x"}]}  # fmt: skip
        assert_error(post(http, path, body), 404, "model")
    assert_error(http.get("/v1/models/no-such-model"), 404)
    assert_error(http.get("/v1/no-such-route"), 404)
    assert_error(http.put("/v1/completions"), 405)
    assert http.get("/v1/models").status_code == 200


def test_extreme_but_valid_values_are_served(http) -> None:
    """Huge top_k and temperature: answered, not 500; stop lists past the caps are 400s."""
    for extra in ({"stop": ["x" * 100_000]}, {"stop": ["a"] * 10_000}):
        assert_error(post(http, "/v1/completions", {**COMPLETION, **extra}), 400, "stop")
    for extra in ({"stop": ["x" * 1024]}, {"stop": ["a"] * 128}, {"top_k": 10**9},
                  {"temperature": 1e308}, {"bad_words": ["x" * 5000]}, {"seed": 2**63 - 1},
                  {"logprobs": 20}, {"priority": 10**30}):  # fmt: skip
        response = post(http, "/v1/completions", {**COMPLETION, **extra})
        assert response.status_code == 200, (extra, response.text)


def test_server_still_healthy_after_the_attack(http) -> None:
    assert http.get("/health").status_code == 200
    response = post(http, "/v1/completions", COMPLETION)
    assert response.status_code == 200 and response.json()["choices"][0]["text"] is not None


def test_a_bad_prompt_in_a_batch_leaves_no_request_half_started(http) -> None:
    """The second prompt cannot fit its max_tokens: a 400, and the first prompt's engine
    request was never created (not created and dropped un-awaited)."""
    import gc
    import warnings

    body = {"model": GEN, "prompt": [[5, 6, 7], [5] * (WINDOW - 4)], "max_tokens": 10}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        response = http.post("/v1/completions", json=body)
        gc.collect()
    assert_error(response, 400)
    assert not [w for w in caught if "never awaited" in str(w.message)]
