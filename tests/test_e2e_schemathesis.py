"""Property-based fuzzing of every operation in /openapi.json (schemathesis): whatever a
client sends that the schema describes — or nearly describes — the server answers with a
status below 500. Bounded: a few examples per operation (under a minute in all), each
request's `model` pinned to a served model of the right kind, so requests reach the engines.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path
from typing import Any

import pytest

from mono_llm.core import AsyncEngineArgs
from mono_llm.core.testing import fixture_path

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402

GEN, EMB, CROSS = "gen", "emb", "cross"
EXAMPLES_PER_OPERATION = 40
# Operations that take a `model` and which served model serves them.
_MODEL_BY_PATH_PART = (("embeddings", EMB), ("pooling", EMB), ("classify", CROSS),
                       ("score", CROSS), ("rerank", CROSS))  # fmt: skip


@pytest.fixture(scope="module")
def base_url(server_factory):
    from mono_llm.openai_api import build_app

    engines = [
        AsyncEngineArgs(model=str(fixture_path("tiny-llama")), served_model_name=GEN,
                        max_model_len=64, max_num_seqs=8),
        AsyncEngineArgs(model=str(fixture_path("tiny-qwen2")), served_model_name=EMB,
                        task="embed", max_model_len=64),
        AsyncEngineArgs(model=str(fixture_path("tiny-bert-cross-encoder")),
                        served_model_name=CROSS),
    ]  # fmt: skip
    with server_factory(build_app(engines)) as running:
        yield running.base_url


def _pin_model(path: str, body: Any) -> None:
    if isinstance(body, dict) and "model" in body:
        body["model"] = next((m for part, m in _MODEL_BY_PATH_PART if part in path), GEN)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_no_operation_answers_5xx(base_url) -> None:
    import httpx

    rss_start = _rss_mb()

    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    statuses: collections.Counter[int] = collections.Counter()
    failures: list[str] = []
    start = time.monotonic()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 15

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            _pin_model(case.path, case.body)
            response = case.call(base_url=base_url, timeout=30)
            statuses[response.status_code] += 1
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.path}: {response.status_code} "
                                f"{response.text[:200]} body={str(case.body)[:300]}")  # fmt: skip

        check()
    elapsed = time.monotonic() - start
    print(f"schemathesis: {sum(statuses.values())} requests in {elapsed:.1f} s; "
          f"statuses {dict(sorted(statuses.items()))}; RSS of the test process (server "
          f"in-process) {rss_start:.0f} -> {_rss_mb():.0f} MB")  # fmt: skip
    assert not failures, "\n".join(failures[:10])
    assert httpx.get(f"{base_url}/health").status_code == 200
    assert sum(statuses.values()) >= len(operations) * 3
