"""Engines in one process share no mutable state.

One server hosts two chat models and an embedding model, each an engine stepping on its own
thread. Requests to all three run concurrently for a while; every one must answer 200 with
exactly what it answers alone (greedy text, embedding vector), and every engine must stay
healthy afterwards. A module-level attention context once let an embeddings step overwrite a
chat step's slot mapping mid-forward, which killed the chat engine for good.
"""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import numpy as np
import pytest

from mono_llm.core.testing import fixture_path, minilm_path

LLAMA = "tiny-llama"
QWEN = "tiny-qwen2"
MINILM = "all-MiniLM-L6-v2"
SECONDS = 8.0
PROMPTS = ["Hello there, how", "The capital of France", "Once upon a time", "1 2 3 4"]


@pytest.fixture(scope="module")
def mixed_server(server_factory):
    from mono_llm.core import AsyncEngineArgs
    from mono_llm.openai_api import build_app

    engines = [
        AsyncEngineArgs(model=str(fixture_path(LLAMA)), served_model_name=LLAMA),
        AsyncEngineArgs(model=str(fixture_path(QWEN)), served_model_name=QWEN),
        AsyncEngineArgs(model=str(minilm_path()), served_model_name=MINILM),
    ]
    with server_factory(build_app(engines)) as running:
        yield running


def _chat(http: httpx.Client, model: str, prompt: str) -> tuple[int, str]:
    response = http.post(
        "/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 12,
            "temperature": 0,
        },
    )
    if response.status_code != 200:
        return response.status_code, response.text
    return 200, response.json()["choices"][0]["message"]["content"]


def _embed(http: httpx.Client, text: str) -> tuple[int, list[float] | str]:
    response = http.post("/v1/embeddings", json={"model": MINILM, "input": [text, text[::-1]]})
    if response.status_code != 200:
        return response.status_code, response.text
    return 200, response.json()["data"][0]["embedding"]


def test_chat_and_embeddings_concurrently_all_succeed_unchanged(mixed_server):
    with httpx.Client(base_url=mixed_server.base_url, timeout=120) as http:
        expected_chat = {(m, p): _chat(http, m, p) for m in (LLAMA, QWEN) for p in PROMPTS}
        expected_embed = {p: _embed(http, p) for p in PROMPTS}
    assert all(status == 200 for status, _ in expected_chat.values()), expected_chat
    assert all(status == 200 for status, _ in expected_embed.values()), expected_embed

    def worker(index: int) -> list[str]:
        problems: list[str] = []
        with httpx.Client(base_url=mixed_server.base_url, timeout=120) as http:
            deadline = time.monotonic() + SECONDS
            turn = index
            while time.monotonic() < deadline:
                prompt = PROMPTS[turn % len(PROMPTS)]
                kind = turn % 3
                turn += 1
                if kind == 2:
                    status, vector = _embed(http, prompt)
                    if status != 200:
                        problems.append(f"embeddings {status}: {vector}")
                    elif not np.allclose(vector, expected_embed[prompt][1], atol=1e-5):
                        problems.append(f"embedding of {prompt!r} changed under load")
                else:
                    model = LLAMA if kind == 0 else QWEN
                    status, text = _chat(http, model, prompt)
                    if status != 200:
                        problems.append(f"{model} {status}: {text}")
                    elif text != expected_chat[(model, prompt)][1]:
                        problems.append(f"{model} greedy text of {prompt!r} changed under load")
        return problems

    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        problems = [p for result in pool.map(worker, range(6)) for p in result]
    assert problems == []

    with httpx.Client(base_url=mixed_server.base_url, timeout=60) as http:
        assert http.get("/health").status_code == 200
        for model in (LLAMA, QWEN):
            assert _chat(http, model, PROMPTS[0]) == expected_chat[(model, PROMPTS[0])]
