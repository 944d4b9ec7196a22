"""Incremental detokenization: UTF-8 split across tokens, special tokens, stop strings."""

from __future__ import annotations

import functools
import itertools

import pytest

from mono_llm.core.engine.detokenizer import IncrementalDetokenizer
from mono_llm.core.sampling_params import SamplingParams
from mono_llm.core.testing import fixture_path
from mono_llm.core.tokenizer import load_tokenizer


@functools.cache
def _tokenizer():
    return load_tokenizer(str(fixture_path("tiny-llama")))


def _stream(
    text: str, params: SamplingParams, prompt: str = "Say:"
) -> tuple[list[str], IncrementalDetokenizer, str | None]:
    tok = _tokenizer()
    detok = IncrementalDetokenizer(tok, tok.encode(prompt), params)
    visible: list[str] = []
    stop = None
    for token_id in tok.encode(text, add_special_tokens=False):
        stop = detok.update([token_id])
        visible.append(detok.visible_text(finished=stop is not None))
        if stop is not None:
            break
    return visible, detok, stop


@pytest.mark.parametrize(
    "text", ["hello world, the quick brown fox", "Grüße aus Köln 😀 日本語 naïve", " lead space"]
)
def test_incremental_equals_full_decode(text: str) -> None:
    tok = _tokenizer()
    ids = tok.encode(text, add_special_tokens=False)
    visible, detok, _ = _stream(text, SamplingParams())
    assert detok.output_text == tok.decode(ids, skip_special_tokens=True) == text
    # Characters split over several tokens are never emitted half-done.
    assert all("\ufffd" not in chunk for chunk in visible)
    # Streamed text only ever grows.
    assert all(b.startswith(a) for a, b in itertools.pairwise(visible))


def test_multibyte_character_is_held_until_complete() -> None:
    tok = _tokenizer()
    ids = tok.encode(" 日本語", add_special_tokens=False)
    tokens = tok.convert_ids_to_tokens(ids)
    assert len(tokens) >= 2  # the fixture's BPE splits these characters' bytes
    detok = IncrementalDetokenizer(tok, tok.encode("x"), SamplingParams())
    detok.update(ids[:-1])
    partial = detok.output_text
    detok.update(ids[-1:])
    assert "\ufffd" not in partial and detok.output_text == " 日本語"
    assert len(partial) < len(detok.output_text)


def test_special_tokens_skip_and_spacing() -> None:
    text = "one two<|start_header_id|>user<|end_header_id|>three"
    _, skipped, _ = _stream(text, SamplingParams())
    assert skipped.output_text == "one twouserthree"
    _, kept, _ = _stream(text, SamplingParams(skip_special_tokens=False))
    # A fast tokenizer ignores spaces_between_special_tokens (as vLLM v1): text == decode.
    assert kept.output_text == text == _tokenizer().decode(_tokenizer().encode(text)[1:])
    _, tight, _ = _stream(
        text, SamplingParams(skip_special_tokens=False, spaces_between_special_tokens=False)
    )
    assert tight.output_text == text


def test_stop_string_across_token_boundaries() -> None:
    text = "hello world, the quick brown fox"
    # "lo wor" spans the tokens 'll', 'o', 'Ġwor'
    visible, detok, stop = _stream(text, SamplingParams(stop=["lo wor"]))
    assert stop == "lo wor"
    assert detok.output_text == "hel"
    # While "lo" could still become the stop string, it was held back from the stream.
    assert "hel" in visible and "hello" not in visible
    assert visible[-1] == "hel"
    _, included, _ = _stream(text, SamplingParams(stop=["lo wor"], include_stop_str_in_output=True))
    assert included.output_text == "hello wor"


def test_earliest_stop_string_wins_and_non_matches_are_released() -> None:
    text = "hello world, the quick brown fox"
    visible, detok, stop = _stream(text, SamplingParams(stop=["quick", "d, t", "zzz"]))
    assert stop == "d, t" and detok.output_text == "hello worl"
    # "hel" could have started "hello..."? no stop begins with "h": nothing is held back.
    visible, _, _ = _stream("hello", SamplingParams(stop=["xyz"]))
    assert visible[-1] == "hello"


def test_ids_past_the_tokenizer_vocabulary_have_no_text() -> None:
    # Models pad their embedding matrix beyond the tokenizer (e.g. to a multiple of 64).
    tok = _tokenizer()
    detok = IncrementalDetokenizer(tok, tok.encode("x"), SamplingParams())
    hello = tok.encode("hello", add_special_tokens=False)
    detok.update([len(tok) + 10, *hello, len(tok) + 11])
    detok.flush()
    assert detok.output_text == "hello"
