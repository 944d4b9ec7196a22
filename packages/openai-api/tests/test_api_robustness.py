"""The guards of the HTTP layer, without an engine: unexpected exceptions become 500 JSON
without dropping the connection, lone surrogates are refused naming the field, validation
errors name the field (not pydantic's union tags), engine failures map to 500 vs 503."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient

from mono_llm.core import AsyncEngineArgs
from mono_llm.core.errors import EngineDeadError, EngineError
from mono_llm.openai_api import ServerArgs, build_app
from mono_llm.openai_api.errors import from_exception, install_error_handlers
from mono_llm.openai_api.request_guards import InternalErrorMiddleware, JsonTextMiddleware

LEAKS = ("Traceback", 'File "', ".py", "site-packages")


def _assert_openai_error(response, status: int, param: str | None = "any") -> dict:
    assert response.status_code == status, response.text
    assert not any(leak in response.text for leak in LEAKS), response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == status
    if param != "any":
        assert error["param"] == param, error
    return error


def _guarded_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(InternalErrorMiddleware)
    app.add_middleware(JsonTextMiddleware)

    @app.post("/boom")
    async def boom() -> None:
        raise RuntimeError("something deep broke in /srv/app/module.py")

    @app.post("/echo")
    async def echo(body: dict) -> dict:
        return body

    @app.get("/half-stream")
    async def half_stream() -> StreamingResponse:
        async def chunks():
            yield "first"
            raise RuntimeError("mid-stream failure")

        return StreamingResponse(chunks())

    return app


def test_an_unexpected_exception_is_a_500_json_and_is_not_re_raised() -> None:
    # raise_server_exceptions=True: Starlette's own handler would re-raise into the client
    # here (and make uvicorn drop the keep-alive connection in a real server).
    client = TestClient(_guarded_app(), raise_server_exceptions=True)
    error = _assert_openai_error(client.post("/boom"), 500, None)
    assert error["type"] == "InternalServerError" and "RuntimeError" in error["message"]
    assert client.post("/echo", json={"a": 1}).json() == {"a": 1}  # the client still works


def test_an_exception_after_the_response_started_ends_the_body_quietly() -> None:
    client = TestClient(_guarded_app(), raise_server_exceptions=True)
    response = client.get("/half-stream")
    assert response.status_code == 200 and response.text == "first"


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b'{"prompt": "\\ud800"}', "prompt"),
        (b'{"messages": [{"role": "user", "content": "ok\\udfff"}]}', "messages.0.content"),
        (b'{"stop": ["fine", "\\uDBFFx"]}', "stop.1"),
        (b'{"logit_bias": {"\\ud800": 1}}', "logit_bias.\\ud800"),
    ],
)
def test_lone_surrogates_are_refused_naming_the_field(raw: bytes, param: str) -> None:
    client = TestClient(_guarded_app())
    response = client.post("/echo", content=raw, headers={"content-type": "application/json"})
    error = _assert_openai_error(response, 400, param)
    assert "lone UTF-16 surrogate" in error["message"]


def test_valid_surrogate_pairs_and_escaped_backslashes_pass() -> None:
    client = TestClient(_guarded_app())
    # json.dumps writes an emoji as a surrogate pair: the common case must not be refused.
    for body in ({"prompt": "smile \U0001f600"}, {"prompt": "literal \\ud800 text"}):
        raw = json.dumps(body).encode()
        response = client.post("/echo", content=raw, headers={"content-type": "application/json"})
        assert response.status_code == 200 and response.json() == body


def test_validation_params_name_the_field_not_the_union_member() -> None:
    client = TestClient(build_app(AsyncEngineArgs(model="/nonexistent"), ServerArgs()))
    cases = [
        ({"prompt": [1.5]}, "prompt"),
        ({"prompt": "x", "logit_bias": {"5": "much"}}, "logit_bias.5"),
        ({"prompt": {"a": 1}}, "prompt"),
        ({"prompt": "x", "stop": 5}, "stop"),
        ({"prompt": "x", "stop": [None]}, "stop"),
        ({"prompt": "x", "n": None}, "n"),
    ]
    for body, param in cases:
        _assert_openai_error(client.post("/v1/completions", json=body), 400, param)
    bad_json = client.post(
        "/v1/completions", content=b'{"prompt": ', headers={"content-type": "application/json"}
    )
    error = _assert_openai_error(bad_json, 400, "body")
    assert error["message"].startswith("The request body is not valid JSON at character")


def test_engine_failures_map_to_500_in_flight_and_503_once_dead() -> None:
    in_flight = from_exception(EngineError("The engine failed while this request was running"))
    assert in_flight.status == 500 and in_flight.type == "InternalServerError"
    dead = from_exception(EngineDeadError("The engine loop has died"))
    assert dead.status == 503 and dead.type == "ServiceUnavailableError"
