"""The HTTP layer without an engine: validation errors, auth, CORS, request ids, error
mapping. The app's lifespan (which loads models) is not entered, so no model is needed."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from mono_llm.core import AsyncEngineArgs
from mono_llm.core.errors import (
    EngineDeadError,
    EngineOverloadedError,
    InvalidRequestError,
    PromptTooLongError,
)
from mono_llm.openai_api import ServerArgs, build_app
from mono_llm.openai_api.errors import OpenAIError, from_exception
from mono_llm.openai_api.http_middleware import resolve_api_keys


def _client(**server_args) -> TestClient:
    app = build_app(AsyncEngineArgs(model="/nonexistent"), ServerArgs(**server_args))
    return TestClient(app)  # not entered: no lifespan, no engine


def test_validation_errors_are_openai_400s_naming_the_field() -> None:
    client = _client()
    response = client.post("/v1/completions", json={"prompt": "x", "n": "many"})
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["param"] == "n" and body["error"]["code"] == 400
    missing = client.post("/v1/chat/completions", json={"model": "m"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "messages"
    empty = client.post("/v1/chat/completions", json={"messages": []})
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "messages"
    no_prompt = client.post("/v1/completions", json={"model": "m"})
    assert no_prompt.status_code == 400 and no_prompt.json()["error"]["param"] == "prompt"
    not_json = client.post(
        "/v1/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 400 and "error" in not_json.json()


def test_unknown_route_is_an_openai_404() -> None:
    response = _client().get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "NotFoundError"


def test_api_key_guards_api_routes_only(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("# tenants\nkey-a\nkey-b\n")
    client = _client(api_key=["key-main", f"@{keys}"])
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
    for key in ("key-main", "key-a", "key-b"):
        # Past auth: the server then answers 503 as no model is loaded in this test.
        response = client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 503, key
    assert client.get("/ready").status_code == 503  # open, but not ready
    assert client.get("/version").status_code == 200
    assert client.get("/openapi.json").status_code == 200
    unauthorized = client.post("/tokenize", json={"prompt": "x"}).json()["error"]
    assert unauthorized["type"] == "AuthenticationError" and unauthorized["code"] == 401


def test_api_keys_from_the_environment() -> None:
    assert resolve_api_keys(None, {"VLLM_API_KEY": "v"}) == ["v"]
    assert resolve_api_keys(None, {"MONO_LLM_API_KEY": "m", "VLLM_API_KEY": "v"}) == ["m"]
    assert resolve_api_keys(["given"], {"VLLM_API_KEY": "v"}) == ["given"]
    assert resolve_api_keys(None, {}) == []


def test_cors_preflight_and_request_id_header() -> None:
    client = _client(allowed_origins=["https://app.example"], enable_request_id_headers=True)
    preflight = client.options(
        "/v1/completions",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    echoed = client.get("/version", headers={"X-Request-Id": "abc"})
    assert echoed.headers["x-request-id"] == "abc"
    generated = client.get("/version").headers["x-request-id"]
    assert len(generated) == 32


def test_offline_docs_served_from_the_package() -> None:
    client = _client(enable_offline_docs=True)
    docs = client.get("/docs").text
    assert "/static/swagger-ui-bundle.js" in docs and "cdn.jsdelivr" not in docs
    assert client.get("/static/swagger-ui-bundle.js").status_code == 200
    redoc = client.get("/redoc").text
    assert "/static/redoc.standalone.js" in redoc and "cdn.jsdelivr" not in redoc
    rooted = TestClient(
        build_app(
            AsyncEngineArgs(model="/x"), ServerArgs(enable_offline_docs=True, root_path="/llm")
        )
    )
    assert "/llm/static/swagger-ui-bundle.js" in rooted.get("/docs").text
    # Behind a proxy that keeps or strips the prefix, routes still match.
    assert rooted.get("/llm/version").status_code == 200
    assert rooted.get("/version").status_code == 200
    assert _client(disable_fastapi_docs=True).get("/docs").status_code == 404


@pytest.mark.parametrize(
    ("exc", "status", "param"),
    [
        (InvalidRequestError("bad", param="top_p"), 400, "top_p"),
        (PromptTooLongError(2000, 1024), 400, "prompt"),
        (EngineOverloadedError("full"), 503, None),
        (EngineDeadError("dead"), 503, None),
        (RuntimeError("boom"), 500, None),
        (TypeError("a bug, not the client's fault"), 500, None),
        (ValueError("bad value"), 400, None),
    ],
)
def test_engine_errors_map_to_statuses(exc, status, param) -> None:
    error = from_exception(exc)
    assert isinstance(error, OpenAIError)
    assert error.status == status and error.param == param
    body = error.to_response().model_dump()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    if isinstance(exc, EngineOverloadedError):
        assert error.headers == {"Retry-After": "1"}
