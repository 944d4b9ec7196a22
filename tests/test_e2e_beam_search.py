"""`use_beam_search` through the openai client: completions and chat return the best `n`
beams, the same ones `LLM.beam_search` finds offline on the same weights."""

from __future__ import annotations

import httpx
import pytest

from mono_llm.core import BeamSearchParams

LLAMA = "tiny-llama"


@pytest.fixture(scope="module")
def offline():
    from mono_llm.core import LLM
    from mono_llm.core.testing import fixture_path

    return LLM(str(fixture_path(LLAMA)), max_model_len=128, num_gpu_blocks_override=128)


def test_completions_beams_match_offline(client, offline) -> None:
    prompt = "The quick brown fox"
    response = client.completions.create(
        model=LLAMA, prompt=prompt, max_tokens=5, n=2, best_of=3,
        extra_body={"use_beam_search": True, "ignore_eos": True},
    )  # fmt: skip
    (beams,) = offline.beam_search(
        [prompt], BeamSearchParams(beam_width=3, max_tokens=5, ignore_eos=True)
    )
    assert [c.text for c in response.choices] == [s.text for s in beams.sequences[:2]]
    assert [c.index for c in response.choices] == [0, 1]
    assert response.usage.completion_tokens == 10


def test_chat_beams_and_length_penalty(client) -> None:
    messages = [{"role": "user", "content": "Hello"}]
    beams = client.chat.completions.create(
        model=LLAMA, messages=messages, max_tokens=4, n=3,
        extra_body={"use_beam_search": True, "length_penalty": 0.5},
    )  # fmt: skip
    assert len(beams.choices) == 3
    texts = [c.message.content for c in beams.choices]
    assert len(set(texts)) == 3  # distinct hypotheses
    greedy = client.chat.completions.create(
        model=LLAMA, messages=messages, max_tokens=4, temperature=0
    )
    assert all(c.finish_reason in ("stop", "length") for c in beams.choices)
    assert greedy.choices[0].message.content  # the server is fine after the search


def test_beam_search_refusals_are_400(server) -> None:
    url = f"{server.v1}/completions"
    for body, param in (
        ({"use_beam_search": True, "stream": True}, "stream"),
        ({"use_beam_search": True, "logprobs": 2}, "logprobs"),
        ({"use_beam_search": True, "n": 3, "best_of": 2}, "best_of"),
    ):
        reply = httpx.post(url, headers=server.headers(),
                           json={"model": LLAMA, "prompt": "x", "max_tokens": 2, **body})  # fmt: skip
        assert reply.status_code == 400 and reply.json()["error"]["param"] == param, reply.text
