"""The bounded response store: size and age limits, running responses kept, 404s."""

from __future__ import annotations

import asyncio

import pytest

from mono_llm.openai_api.errors import OpenAIError
from mono_llm.openai_api.responses.store import ResponseStore, StoredResponse


def _entry(task=None) -> StoredResponse:
    return StoredResponse(response={"status": "completed"}, input_items=[], messages=[], task=task)


def test_least_recently_used_goes_first() -> None:
    store = ResponseStore(max_entries=2, ttl_s=60)
    store.put("a", _entry())
    store.put("b", _entry())
    store.get("a")  # a is now the most recent
    store.put("c", _entry())
    assert len(store) == 2 and store.get("a") and store.get("c")
    with pytest.raises(OpenAIError) as info:
        store.get("b")
    assert info.value.status == 404 and info.value.param == "response_id"


def test_entries_expire(monkeypatch) -> None:
    import mono_llm.openai_api.responses.store as module

    now = [1000.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: now[0])
    store = ResponseStore(max_entries=10, ttl_s=5)
    store.put("a", _entry())
    now[0] += 4
    assert store.get("a")
    now[0] += 2
    with pytest.raises(OpenAIError):
        store.get("a")


def test_running_background_responses_are_never_evicted() -> None:
    async def scenario() -> None:
        blocker = asyncio.Event()
        task = asyncio.create_task(blocker.wait())
        store = ResponseStore(max_entries=1, ttl_s=60)
        store.put("running", _entry(task))
        with pytest.raises(OpenAIError) as info:
            store.reserve_check()  # every slot runs: a new stored response is a 503
        assert info.value.status == 503
        store.put("done", _entry())
        assert store.get("running").running and len(store) == 2
        blocker.set()
        await task
        store.put("later", _entry())
        assert len(store) == 1

    asyncio.run(scenario())


def test_bad_bounds() -> None:
    with pytest.raises(ValueError):
        ResponseStore(max_entries=0, ttl_s=1)
