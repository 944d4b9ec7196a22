"""Reasoning parsers on crafted replies: the split, and the same split when streamed in pieces."""

from __future__ import annotations

import random

import pytest

from mono_llm.openai_api.reasoning import REASONING_PARSERS, ReasoningStream, get_reasoning_parser

CASES = [
    # (parser, prompt, reply, reasoning, answer)
    ("qwen3", None, "<think>plan it</think>\n\nThe answer.", "plan it", "\n\nThe answer."),
    ("qwen3", None, "\n<think>a < b</think>ok", "a < b", "ok"),
    ("qwen3", None, "No thinking here.", None, "No thinking here."),
    ("qwen3", None, "<think>cut short", "cut short", ""),
    ("qwen3", "<|im_start|>assistant\n<think>\n\n</think>\n\n", "Plain", None, "Plain"),
    ("qwen3", "<|im_start|>assistant\n<think>\n", "inside</think>out", "inside", "out"),
    ("deepseek_r1", None, "thinking</think>answer", "thinking", "answer"),
    ("deepseek_r1", None, "<think>thinking</think>answer", "thinking", "answer"),
    ("deepseek_r1", None, "never closed", "never closed", ""),
    ("deepseek_r1", "x</think>", "all answer", None, "all answer"),
    ("deepseek_r1", None, "é思考</think>答え", "é思考", "答え"),
]


@pytest.mark.parametrize(("name", "prompt", "reply", "reasoning", "answer"), CASES)
def test_split_and_streamed_split_agree(name, prompt, reply, reasoning, answer) -> None:
    parser = get_reasoning_parser(name)
    assert parser.split(reply, prompt) == (reasoning, answer)
    rng = random.Random(0)
    for _ in range(20):  # random chunkings, markers cut anywhere
        stream = ReasoningStream(parser, prompt)
        got_reasoning, got_answer, position = "", "", 0
        while position < len(reply):
            size = rng.randint(1, 4)
            thought, text = stream.feed(reply[position : position + size])
            got_reasoning, got_answer = got_reasoning + thought, got_answer + text
            assert "<think" not in got_answer and "</think" not in got_reasoning
            position += size
        thought, text = stream.finish()
        assert (got_reasoning + thought, got_answer + text) == (reasoning or "", answer)


def test_registry_names_and_unknown_parser() -> None:
    assert set(REASONING_PARSERS) >= {"deepseek_r1", "qwen3"}
    with pytest.raises(ValueError, match="deepseek_r1"):
        get_reasoning_parser("nope")
