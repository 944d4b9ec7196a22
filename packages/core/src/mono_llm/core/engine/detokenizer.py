"""Incremental detokenization with stop strings.

Text is produced token by token by decoding a small window of recent tokens twice, with and
without the newest ones, and emitting the difference (the "prefix offset / read offset"
method): byte-level BPE splits multi-byte UTF-8 characters across tokens, and a window that
ends inside a character decodes to U+FFFD, so nothing is emitted until the character is
complete. Added (special) tokens are decoded on their own, separated by spaces only for slow
tokenizers (`spaces_between_special_tokens`, as vLLM), or skipped.

Stop strings are searched only where new text could complete one, and streamed text holds
back any tail that could still become a stop string, so a client never receives part of a
stop string that is later cut.
"""

from __future__ import annotations

import re
from typing import Any

from mono_llm.core.sampling_params import SamplingParams
from mono_llm.core.tokenizer import TokenizerInfo, tokenizer_info

# Prompt tokens kept as left context: enough for the decoder to place leading spaces.
_CONTEXT_TOKENS = 5
# A UTF-8 character has at most 4 bytes, so at most 4 byte-level tokens can be pending on one;
# past that the bytes are invalid for good (a random model emits such runs) and are released
# as U+FFFD rather than held forever (which would also make each step re-decode a growing window).
_MAX_PENDING_TOKENS = 4
_REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """Turns a sequence's generated token ids into text, one step at a time."""

    def __init__(self, tokenizer: Any, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self.info: TokenizerInfo = tokenizer_info(tokenizer)
        self.tokenizer = tokenizer
        self.skip_special_tokens = params.skip_special_tokens
        # As vLLM v1: the spacing flag is a slow-tokenizer behaviour; fast tokenizers (all of
        # transformers 5's) decode added tokens without spaces, and the text must equal
        # `tokenizer.decode` (a Qwen `<tool_call>` marker followed by "\n{" stays intact).
        self.spaces_between_special_tokens = params.spaces_between_special_tokens and not (
            getattr(tokenizer, "is_fast", False)
        )
        self.stop: list[str] = list(params.stop or [])
        # One alternation over every stop string, searched from where new text could complete
        # one: a step costs O(new text + longest stop), not O(total length of all stop strings
        # x text). At equal positions the earlier string in the list wins, as before.
        self._stop_pattern = (
            re.compile("|".join(re.escape(stop) for stop in self.stop)) if self.stop else None
        )
        self._max_stop_len = max((len(stop) for stop in self.stop), default=0)
        self._stops_by_first_char: dict[str, list[str]] = {}
        for stop in self.stop:
            self._stops_by_first_char.setdefault(stop[0], []).append(stop)
        self.include_stop = params.include_stop_str_in_output
        self.tokens: list[str] = self._convert(prompt_token_ids[-(_CONTEXT_TOKENS + 1) :])
        self.prefix_offset = max(len(self.tokens) - _CONTEXT_TOKENS, 0)
        self.read_offset = len(self.tokens)
        self.output_text = ""
        self.stopped_by: str | None = None

    def _convert(self, token_ids: list[int]) -> list[str]:
        if self.skip_special_tokens:
            special = self.info.special_ids
            token_ids = [t for t in token_ids if t not in special]
        # Models often have more embedding rows than the tokenizer has tokens (padding for
        # GPU-friendly shapes); ids past the tokenizer have no text.
        return [t for t in self.tokenizer.convert_ids_to_tokens(token_ids) if t is not None]

    def _to_string(self, tokens: list[str]) -> str:
        added = self.info.added_tokens
        if not added or not any(token in added for token in tokens):
            return self.tokenizer.convert_tokens_to_string(tokens) if tokens else ""
        pieces: list[str] = []
        run: list[str] = []
        for token in tokens:
            if token in added:
                if run:
                    pieces.append(self.tokenizer.convert_tokens_to_string(run))
                    run = []
                pieces.append(token)
            else:
                run.append(token)
        if run:
            pieces.append(self.tokenizer.convert_tokens_to_string(run))
        return (" " if self.spaces_between_special_tokens else "").join(pieces)

    def update(self, new_token_ids: list[int]) -> str | None:
        """Append tokens; returns the stop string if one now ends the text (text truncated)."""
        num_new_chars = 0
        for token_id in new_token_ids:
            self.tokens.extend(self._convert([token_id]))
            window = self.tokens[self.prefix_offset :]
            prefix_text = self._to_string(self.tokens[self.prefix_offset : self.read_offset])
            new_text = self._to_string(window)
            pending = len(self.tokens) - self.read_offset
            if len(new_text) > len(prefix_text) and (
                not new_text.endswith(_REPLACEMENT_CHAR) or pending > _MAX_PENDING_TOKENS
            ):
                delta = new_text[len(prefix_text) :]
                self.output_text += delta
                num_new_chars += len(delta)
                self.prefix_offset = self.read_offset
                self.read_offset = len(self.tokens)
        if self.stop and num_new_chars:
            return self._check_stop(num_new_chars)
        return None

    def flush(self) -> None:
        """At the end of generation, emit what was held back waiting for more bytes (an
        incomplete character then decodes to U+FFFD, as a full decode would give)."""
        if self.stopped_by is not None or self.read_offset >= len(self.tokens):
            return
        prefix_text = self._to_string(self.tokens[self.prefix_offset : self.read_offset])
        new_text = self._to_string(self.tokens[self.prefix_offset :])
        if len(new_text) > len(prefix_text):
            self.output_text += new_text[len(prefix_text) :]
        self.prefix_offset = self.read_offset = len(self.tokens)

    def _check_stop(self, num_new_chars: int) -> str | None:
        text = self.output_text
        assert self._stop_pattern is not None
        start = max(0, len(text) - num_new_chars - self._max_stop_len + 1)
        match = self._stop_pattern.search(text, start)
        if match is None:
            return None
        index, stop = match.start(), match.group(0)
        self.output_text = text[: index + len(stop)] if self.include_stop else text[:index]
        self.stopped_by = stop
        return stop

    def visible_text(self, finished: bool) -> str:
        """Text safe to stream: without a tail that may still grow into a stop string."""
        text = self.output_text
        if finished or not self.stop or self.include_stop:
            return text
        # The longest suffix of the text that is a proper prefix of some stop string; only the
        # last (longest stop - 1) characters can hold one, and only where a stop's first
        # character appears.
        tail_start = max(0, len(text) - self._max_stop_len + 1)
        for index in range(tail_start, len(text)):
            suffix_len = len(text) - index
            for stop in self._stops_by_first_char.get(text[index], ()):
                if len(stop) > suffix_len and text.startswith(stop[:suffix_len], index):
                    return text[:index]
        return text
