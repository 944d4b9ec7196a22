"""Property-based fuzzing of the live app (hypothesis): a valid body with any of its fields
replaced by arbitrary JSON (NaN, infinities, 2**70, lone surrogates, nested junk, plausible
small values) is answered with 200 or a 4xx OpenAI error; never a 5xx, a stack trace, an
in-band 5xx error in a stream, or a dead engine.

One in-process app (TestClient runs its lifespan) serves tiny-llama with a 64-token window
and tiny-qwen2 as an embedder. Derandomized, so CI and laptops try the same bodies.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mono_llm.core import AsyncEngineArgs
from mono_llm.core.testing import fixture_path
from mono_llm.openai_api import build_app
from mono_llm.openai_api.chat_completion.protocol import ChatCompletionRequest
from mono_llm.openai_api.completion.protocol import CompletionRequest

GEN, EMB = "gen", "emb"
LEAK = re.compile(r"Traceback|File \"|\.py\b|site-packages")
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,  # no .hypothesis/ folder in the checkout
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Any JSON a client can send, including what Python's json module lets through.
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-3, max_value=70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-3, max_value=3),
    st.text(alphabet=st.characters(exclude_categories=()), max_size=12),  # surrogates too
    st.sampled_from(["", "user", "assistant", "json_object", "auto", "required", "none"]),
)
json_values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=10,
)


@pytest.fixture(scope="module")
def client():
    engines = [
        AsyncEngineArgs(model=str(fixture_path("tiny-llama")), served_model_name=GEN,
                        max_model_len=64, max_num_seqs=8, disable_log_stats=True),
        AsyncEngineArgs(model=str(fixture_path("tiny-qwen2")), served_model_name=EMB,
                        task="embed", max_model_len=64, disable_log_stats=True),
    ]  # fmt: skip
    with TestClient(build_app(engines), raise_server_exceptions=False) as test_client:
        yield test_client


def _send(client: TestClient, path: str, body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()  # NaN, Infinity and \\udXXX escapes pass through
    response = client.post(path, content=raw, headers={"content-type": "application/json"})
    text = response.text
    assert response.status_code < 500, (body, text)
    assert not LEAK.search(text), (body, text)
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, (body, error)
        assert error["code"] == response.status_code
        return
    if response.headers["content-type"].startswith("text/event-stream"):
        events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
        assert events and events[-1] == "[DONE]", (body, text[-300:])
        for event in events[:-1]:
            payload = json.loads(event)
            assert payload.get("error", {}).get("code", 200) < 500, (body, payload)


def _overrides(fields: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(fields), json_values, min_size=1, max_size=4)


def _assert_alive(client: TestClient) -> None:
    assert client.get("/health").status_code == 200


COMPLETION_FIELDS = sorted(set(CompletionRequest.model_fields) - {"model"})
CHAT_FIELDS = sorted(set(ChatCompletionRequest.model_fields) - {"model"})


@FUZZ
@given(overrides=_overrides(COMPLETION_FIELDS))
def test_fuzzed_completions(client, overrides) -> None:
    body = {"model": GEN, "prompt": "hello there", "max_tokens": 3, **overrides}
    _send(client, "/v1/completions", body)


@FUZZ
@given(overrides=_overrides(CHAT_FIELDS))
def test_fuzzed_chat_completions(client, overrides) -> None:
    body = {"model": GEN, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
            **overrides}  # fmt: skip
    _send(client, "/v1/chat/completions", body)


@FUZZ
@given(
    path=st.sampled_from(["/v1/embeddings", "/pooling", "/tokenize", "/detokenize"]),
    overrides=_overrides(
        [
            "input",
            "prompt",
            "messages",
            "tokens",
            "encoding_format",
            "dimensions",
            "truncate_prompt_tokens",
            "add_special_tokens",
            "normalize",
            "use_activation",
            "return_token_strs",
        ]
    ),
)
def test_fuzzed_pooling_and_tokenizer(client, path, overrides) -> None:
    base: dict[str, Any] = {"/v1/embeddings": {"model": EMB, "input": "hello"},
                            "/pooling": {"model": EMB, "input": [1, 2, 3]},
                            "/tokenize": {"model": GEN, "prompt": "hello"},
                            "/detokenize": {"model": GEN, "tokens": [1, 2]}}[path]  # fmt: skip
    _send(client, path, {**base, **overrides})


def test_engines_survived_the_fuzzing(client) -> None:
    _assert_alive(client)
    response = client.post("/v1/completions", json={"model": GEN, "prompt": "x", "max_tokens": 2})
    assert response.status_code == 200
    assert not math.isnan(response.json()["usage"]["total_tokens"])
