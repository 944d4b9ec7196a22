"""Streamed completions and chat completions send one chunk per engine step that generated
tokens, even when the step's text is empty.

Byte-level BPE tokens often end inside a UTF-8 character; the detokenizer holds those bytes
back until the character is complete, so the step's text is "". The chunk still goes out
(`"text": ""`, or `{"content": ""}` in chat), with its logprobs: clients that time chunks see
one per token, and logprobs stay aligned with the tokens they belong to.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

LLAMA = "tiny-llama"
PROMPT = "Streaming sends each new piece of text"


@pytest.fixture(scope="module")
def lead_byte_token() -> int:
    """The token of the single byte 0xE6: the first of the three bytes of a character such
    as 日. Generated on its own it never completes a character, so its step's text is empty.
    (Byte-level BPE writes byte 0xE6 as the symbol 'æ'.)"""
    from transformers import AutoTokenizer

    from mono_llm.core.testing import fixture_path

    tokenizer = AutoTokenizer.from_pretrained(str(fixture_path(LLAMA)))
    token_id = tokenizer.convert_tokens_to_ids("æ")
    assert tokenizer.convert_ids_to_tokens([token_id]) == ["æ"]
    assert tokenizer.decode([token_id]) == "\ufffd"  # a partial UTF-8 sequence
    return token_id


def _exact(n: int, **extra: Any) -> dict[str, Any]:
    """Greedy, exactly `n` generated tokens."""
    return {"max_tokens": n, "temperature": 0, "extra_body": {"ignore_eos": True, "min_tokens": n, **extra}}  # fmt: skip


def _one_chunk_per_step(
    open_stream: Callable[[], Any], tokens_in: Callable[[Any], int | None], n: int
) -> list[Any]:
    """The chunks (those with choices) of a stream in which every engine step came alone.

    A consumer that falls behind the engine legitimately gets the steps that piled up as one
    output, so one chunk with several tokens; on a loaded machine that can happen to any
    request, so the stream is retried (three attempts) until each step arrived alone. Every
    attempt must account for all `n` tokens, each chunk that carries tokens (`tokens_in` is
    not None) carrying at least one.
    """
    counts: list[int] = []
    for _ in range(3):
        chunks = [chunk for chunk in open_stream() if chunk.choices]
        counts = [c for c in map(tokens_in, chunks) if c is not None]
        assert sum(counts) == n and all(count >= 1 for count in counts), counts
        if counts == [1] * n:
            return chunks
    raise AssertionError(f"steps were merged in every attempt (tokens per chunk: {counts})")


def _completion_tokens(chunk: Any) -> int:
    return len(chunk.choices[0].logprobs.tokens)


def _chat_tokens(chunk: Any) -> int | None:
    logprobs = chunk.choices[0].logprobs
    return None if logprobs is None else len(logprobs.content)  # None: the role chunk


def test_completion_stream_has_one_chunk_per_token_with_aligned_logprobs(client) -> None:
    n = 24
    whole = client.completions.create(model=LLAMA, prompt=PROMPT, logprobs=1, **_exact(n))
    usage_chunks = []

    def open_stream() -> Any:
        chunks = list(
            client.completions.create(
                model=LLAMA,
                prompt=PROMPT,
                logprobs=1,
                stream=True,
                stream_options={"include_usage": True},
                **_exact(n),
            )
        )
        usage_chunks.append(chunks[-1])
        return chunks

    choices = [c.choices[0] for c in _one_chunk_per_step(open_stream, _completion_tokens, n)]
    assert all(choice.finish_reason is None for choice in choices[:-1])
    assert choices[-1].finish_reason == "length"
    assert "".join(choice.text for choice in choices) == whole.choices[0].text
    streamed_tokens = [choice.logprobs.tokens[0] for choice in choices]
    assert streamed_tokens == whole.choices[0].logprobs.tokens
    offsets = [choice.logprobs.text_offset[0] for choice in choices]
    assert offsets == whole.choices[0].logprobs.text_offset
    assert usage_chunks[-1].choices == [] and usage_chunks[-1].usage.completion_tokens == n


def test_completion_token_ending_inside_a_character_gets_an_empty_chunk(
    client, lead_byte_token
) -> None:
    n = 6
    forced = _exact(n, allowed_token_ids=[lead_byte_token])
    whole = client.completions.create(model=LLAMA, prompt=PROMPT, logprobs=0, **forced)
    assert whole.usage.completion_tokens == n
    chunks = _one_chunk_per_step(
        lambda: client.completions.create(
            model=LLAMA, prompt=PROMPT, logprobs=0, stream=True, **forced
        ),
        _completion_tokens,
        n,
    )
    choices = [chunk.choices[0] for chunk in chunks]
    # The first step's byte starts a character that never completes: held back, sent empty.
    assert choices[0].text == ""
    assert choices[0].logprobs.token_logprobs[0] is not None
    assert "".join(choice.text for choice in choices) == whole.choices[0].text
    assert set(whole.choices[0].text) == {"\ufffd"}  # the held bytes come out in the end


def test_chat_stream_sends_empty_content_deltas_for_held_back_bytes(
    client, lead_byte_token
) -> None:
    n = 6
    messages = [{"role": "user", "content": "Write something in Japanese."}]
    forced = _exact(n, allowed_token_ids=[lead_byte_token])
    whole = client.chat.completions.create(model=LLAMA, messages=messages, **forced)
    chunks = _one_chunk_per_step(
        lambda: client.chat.completions.create(
            model=LLAMA,
            messages=messages,
            logprobs=True,
            stream=True,
            stream_options={"include_usage": True, "continuous_usage_stats": True},
            **forced,
        ),
        _chat_tokens,
        n,
    )
    choices = [chunk.choices[0] for chunk in chunks]
    assert choices[0].delta.role == "assistant" and choices[0].logprobs is None
    assert len(choices) == n + 1
    assert choices[1].delta.content == ""
    assert choices[-1].finish_reason == "length"
    assert all(choice.finish_reason is None for choice in choices[:-1])
    streamed = "".join(choice.delta.content or "" for choice in choices)
    assert streamed == whole.choices[0].message.content
    # Continuous usage: each step's chunk counts the tokens generated so far.
    assert [chunk.usage.completion_tokens for chunk in chunks[1:]] == list(range(1, n + 1))


def test_chat_stream_n_choices_each_get_every_step(client, lead_byte_token) -> None:
    n = 5
    chunks = _one_chunk_per_step(
        lambda: client.chat.completions.create(
            model=LLAMA,
            messages=[{"role": "user", "content": "hi"}],
            n=2,
            logprobs=True,
            stream=True,
            **_exact(n, allowed_token_ids=[lead_byte_token]),
        ),
        _chat_tokens,
        2 * n,  # each chunk holds one choice: n steps for each of the two
    )
    for index in (0, 1):
        choices = [c.choices[0] for c in chunks if c.choices[0].index == index]
        assert len(choices) == n + 1
        assert choices[0].delta.role == "assistant"
        assert choices[1].delta.content == ""
        assert choices[-1].finish_reason == "length"
