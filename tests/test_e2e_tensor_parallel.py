"""A tensor-parallel engine (two gloo ranks on CPU) behind the server answers the openai
client with the same greedy text and logprobs as the offline engine on one device."""

from __future__ import annotations

from typing import Any

import pytest

from mono_llm.core import LLM, AsyncEngineArgs, SamplingParams
from mono_llm.core.testing import fixture_path
from mono_llm.openai_api import build_app

MODEL = "tiny-qwen2"
PROMPTS = ["hello there", "the quick brown fox"]


def test_tp2_server_matches_tp1_offline(server_factory: Any) -> None:
    offline = LLM(str(fixture_path(MODEL)), max_model_len=128, num_gpu_blocks_override=64)
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=2)
    expected = offline.generate(PROMPTS, params)
    del offline
    args = AsyncEngineArgs(
        model=str(fixture_path(MODEL)),
        served_model_name=MODEL,
        max_model_len=128,
        num_gpu_blocks_override=64,
        tensor_parallel_size=2,
    )
    with server_factory(build_app(args)) as server:
        client = server.openai()
        for prompt, ref in zip(PROMPTS, expected, strict=True):
            out = client.completions.create(
                model=MODEL,
                prompt=prompt,
                max_tokens=12,
                temperature=0,
                logprobs=2,
                extra_body={"ignore_eos": True},
            )
            choice = out.choices[0]
            assert choice.text == ref.outputs[0].text
            ref_lps = [
                step[token].logprob
                for step, token in zip(
                    ref.outputs[0].logprobs, ref.outputs[0].token_ids, strict=True
                )
            ]
            assert choice.logprobs.token_logprobs == pytest.approx(ref_lps, abs=1e-4)
        # Streaming and chat go through the same engine.
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=8,
            temperature=0,
            stream=True,
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
