"""Server behaviour around the endpoints: API keys, request ids, docs, metrics, disconnects,
health probes and the greedy-parity check against the offline `LLM`."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

LLAMA = "tiny-llama"


def test_wrong_or_missing_api_key_is_an_authentication_error(server) -> None:
    with pytest.raises(openai.AuthenticationError):
        server.openai(api_key="wrong-key").models.list()
    with pytest.raises(openai.AuthenticationError):  # no Authorization header at all
        server.openai().completions.create(
            model=LLAMA, prompt="x", max_tokens=1, extra_headers={"Authorization": openai.Omit()}
        )
    raw = httpx.post(f"{server.v1}/completions", json={"model": LLAMA, "prompt": "x"})
    assert raw.status_code == 401
    assert raw.json()["error"]["type"] == "AuthenticationError"
    assert httpx.post(f"{server.base_url}/tokenize", json={"prompt": "x"}).status_code == 401
    # Probes, metrics and docs stay open.
    for path in ("/health", "/ready", "/ping", "/version", "/metrics", "/openapi.json", "/docs"):
        assert httpx.get(f"{server.base_url}{path}").status_code == 200, path


def test_request_id_round_trip(client) -> None:
    completion = client.completions.create(
        model=LLAMA, prompt="hi", max_tokens=2, extra_headers={"X-Request-Id": "trace-42"}
    )
    assert completion._request_id == "trace-42"
    assert completion.id == "cmpl-trace-42"
    chat = client.chat.completions.create(
        model=LLAMA, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    generated = chat._request_id
    assert generated and len(generated) == 32
    assert chat.id == f"chatcmpl-{generated}"


def test_offline_docs_reference_only_packaged_assets(server) -> None:
    for page in ("/docs", "/redoc"):
        html = httpx.get(f"{server.base_url}{page}").text
        assert "/static/" in html
        assert "cdn." not in html and "https://" not in html.replace("https://swagger.io", ""), page
    js = httpx.get(f"{server.base_url}/static/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 500_000
    assert httpx.get(f"{server.base_url}/static/redoc.standalone.js").status_code == 200
    assert httpx.get(f"{server.base_url}/static/swagger-ui.css").status_code == 200


def test_openapi_schema_is_valid(server) -> None:
    schema = httpx.get(f"{server.base_url}/openapi.json").json()
    assert schema["openapi"].startswith("3.")
    for path in ("/v1/completions", "/v1/chat/completions", "/v1/models", "/tokenize",
                 "/detokenize", "/health", "/metrics"):  # fmt: skip
        assert path in schema["paths"], path
    # Every $ref resolves inside the document.
    text = json.dumps(schema)
    refs = {part.split('"')[0] for part in text.split('"$ref": "')[1:]}
    for ref in refs:
        node = schema
        for key in ref.removeprefix("#/").split("/"):
            node = node[key]
    request = schema["components"]["schemas"]["CompletionRequest"]["properties"]
    assert {"prompt", "max_tokens", "top_k", "min_tokens", "ignore_eos"} <= set(request)


def test_metrics_counters_move(client, scrape_metrics) -> None:
    label = f'{{model_name="{LLAMA}"}}'
    before = scrape_metrics()
    client.completions.create(model=LLAMA, prompt="count me", max_tokens=5, temperature=0)
    after = scrape_metrics()
    for prefix in ("mono_llm", "vllm"):
        gen = f"{prefix}:generation_tokens_total{label}"
        assert after[gen] - before.get(gen, 0) == 5
        prompt = f"{prefix}:prompt_tokens_total{label}"
        assert after[prompt] > before.get(prompt, 0)
        ttft = f"{prefix}:time_to_first_token_seconds_count{label}"
        assert after[ttft] == before.get(ttft, 0) + 1
        e2e = f"{prefix}:e2e_request_latency_seconds_count{label}"
        assert after[e2e] == before.get(e2e, 0) + 1
        assert f"{prefix}:kv_cache_usage_perc{label}" in after
        assert f"{prefix}:num_requests_running{label}" in after


def test_disconnect_mid_stream_aborts_and_frees_blocks(server, scrape_metrics) -> None:
    label = f'model_name="{LLAMA}"'
    abort_key = f'mono_llm:request_success_total{{finished_reason="abort",{label}}}'
    aborts_before = scrape_metrics().get(abort_key, 0)
    with httpx.stream(
        "POST",
        f"{server.v1}/completions",
        headers=server.headers(),
        json={"model": LLAMA, "prompt": "never ending", "max_tokens": 900, "ignore_eos": True,
              "stream": True},
        timeout=60,
    ) as response:  # fmt: skip
        lines = response.iter_lines()
        received = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: {") for line in received)
        running = scrape_metrics()[f"mono_llm:num_requests_running{{{label}}}"]
        assert running == 1
    # Leaving the block closed the connection mid-stream.
    deadline = time.monotonic() + 20
    while True:
        metrics = scrape_metrics()
        idle = (
            metrics[f"mono_llm:num_requests_running{{{label}}}"] == 0
            and metrics[f"mono_llm:kv_cache_usage_perc{{{label}}}"] == 0
        )
        if idle and metrics.get(abort_key, 0) == aborts_before + 1:
            break
        assert time.monotonic() < deadline, "the request kept running after the disconnect"
        time.sleep(0.1)
    assert metrics[f"mono_llm:generation_tokens_total{{{label}}}"] > 0


def test_health_ready_version(server) -> None:
    assert httpx.get(f"{server.base_url}/health").status_code == 200
    ready = httpx.get(f"{server.base_url}/ready").json()
    assert ready["status"] == "ready" and ready["models"] == ["tiny-llama", "tiny-qwen2"]
    assert httpx.get(f"{server.base_url}/version").json()["version"]


def test_greedy_api_output_equals_offline_llm(client) -> None:
    from mono_llm.core import LLM, SamplingParams
    from mono_llm.core.testing import fixture_path

    prompts = ["The capital of France is", "1, 2, 3,"]
    llm = LLM(model=str(fixture_path(LLAMA)))
    offline = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)
    served = client.completions.create(model=LLAMA, prompt=prompts, max_tokens=12, temperature=0)
    by_index = sorted(served.choices, key=lambda c: c.index)
    assert [c.text for c in by_index] == [o.outputs[0].text for o in offline]


def test_disconnect_during_non_streaming_request_aborts_it(server, scrape_metrics) -> None:
    label = f'model_name="{LLAMA}"'
    abort_key = f'mono_llm:request_success_total{{finished_reason="abort",{label}}}'
    aborts_before = scrape_metrics().get(abort_key, 0)
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        httpx.post(
            f"{server.v1}/chat/completions",
            headers=server.headers(),
            json={"model": LLAMA, "messages": [{"role": "user", "content": "long"}],
                  "max_tokens": 900, "ignore_eos": True},
            timeout=httpx.Timeout(60, read=0.5),
        )  # fmt: skip
    deadline = time.monotonic() + 20
    while True:
        metrics = scrape_metrics()
        if (
            metrics.get(abort_key, 0) == aborts_before + 1
            and metrics[f"mono_llm:num_requests_running{{{label}}}"] == 0
            and metrics[f"mono_llm:kv_cache_usage_perc{{{label}}}"] == 0
        ):
            break
        assert time.monotonic() < deadline, "the request kept running after the disconnect"
        time.sleep(0.1)
