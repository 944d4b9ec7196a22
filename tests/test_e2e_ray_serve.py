"""The Ray Serve example of docs/deployment.md, run: `build_app` mounted with
`serve.ingress` on a local Ray instance, answering the openai client."""

from __future__ import annotations

import time
from typing import Any

import pytest

from mono_llm.core import AsyncEngineArgs
from mono_llm.core.testing import fixture_path
from mono_llm.openai_api import ServerArgs, build_app
from tests.conftest import free_port

MODEL = "tiny-llama"


@pytest.fixture
def ray_cluster() -> Any:
    ray = pytest.importorskip("ray")
    # Two CPUs and no dashboard: the smallest local cluster, quick to start on a busy machine.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()


def test_ray_serve_deployment_answers_the_openai_client(ray_cluster: Any) -> None:
    import httpx
    import openai
    from ray import serve

    app = build_app(
        AsyncEngineArgs(model=str(fixture_path(MODEL)), served_model_name=MODEL, max_model_len=128),
        ServerArgs(),
    )

    # The documented deployment (num_gpus=1 there; this machine has none) with the
    # documented options.
    @serve.deployment(
        ray_actor_options={"num_cpus": 1},
        max_ongoing_requests=256,
        autoscaling_config={"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 64},
        health_check_period_s=2,
    )
    @serve.ingress(app)
    class MonoLLMServer:
        pass

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(MonoLLMServer.bind(), route_prefix="/", blocking=False)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:  # the replica loads the model in the app's lifespan
        try:
            if httpx.get(f"{base}/ready", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the Ray Serve replica did not become ready"
        time.sleep(0.5)
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)
    assert [m.id for m in client.models.list().data] == [MODEL]
    out = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=8, temperature=0
    )
    assert out.choices[0].message.content
    assert out.usage.completion_tokens > 0
    stream = client.completions.create(model=MODEL, prompt="hi", max_tokens=4, stream=True)
    assert sum(1 for chunk in stream if chunk.choices and chunk.choices[0].text) >= 1
    assert httpx.get(f"{base}/health", timeout=10).status_code == 200
    time.sleep(5)  # a few health-check periods: the replica stays the healthy one
    status = serve.status().applications["default"]
    assert status.status == "RUNNING", status
