"""Engine logprobs -> the two OpenAI shapes.

Completions use the legacy parallel lists (tokens / token_logprobs / top_logprobs /
text_offset); chat uses one object per token with its UTF-8 bytes and its alternatives.
The engine gives, per position, a dict {token_id: Logprob} holding the chosen token and the
top-N alternatives, each with its rank.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from mono_llm.core.outputs import Logprob
from mono_llm.openai_api.chat_completion.protocol import (
    ChatCompletionLogProb,
    ChatCompletionLogProbs,
    ChatCompletionLogProbsContent,
)
from mono_llm.openai_api.completion.protocol import CompletionLogProbs

# JSON has no -inf; OpenAI clients expect a finite float (vLLM sends -9999.0 too).
_NEG_INF_STANDIN = -9999.0


def _finite(value: float) -> float:
    return max(value, _NEG_INF_STANDIN) if not math.isnan(value) else _NEG_INF_STANDIN


class TokenText:
    """Decodes token ids for logprob entries (or writes `token_id:N` when asked)."""

    def __init__(self, tokenizer: Any, as_token_ids: bool = False) -> None:
        self.tokenizer = tokenizer
        self.as_token_ids = as_token_ids

    def __call__(self, token_id: int, logprob: Logprob | None = None) -> str:
        if self.as_token_ids:
            return f"token_id:{token_id}"
        if logprob is not None and logprob.decoded_token is not None:
            return logprob.decoded_token
        return self.tokenizer.decode([token_id])


def completion_logprobs(
    token_ids: Sequence[int],
    positions: Sequence[dict[int, Logprob] | None],
    token_text: TokenText,
    *,
    num_top: int,
    initial_text_offset: int = 0,
) -> CompletionLogProbs:
    """The completions `logprobs` object for a run of tokens (prompt echo or generated).

    `positions[i]` is None for a token without a logprob (the first prompt token).
    """
    out = CompletionLogProbs()
    offset = initial_text_offset
    for token_id, entries in zip(token_ids, positions):
        if entries is None:
            text = token_text(token_id)
            out.tokens.append(text)
            out.token_logprobs.append(None)
            out.top_logprobs.append(None)
        else:
            chosen = entries.get(token_id)
            text = token_text(token_id, chosen)
            out.tokens.append(text)
            out.token_logprobs.append(_finite(chosen.logprob) if chosen else None)
            top: dict[str, float] = {}
            ranked = sorted(entries.items(), key=lambda kv: kv[1].rank or 0)
            for alt_id, alt in ranked:
                if alt_id == token_id or (alt.rank is not None and alt.rank <= num_top):
                    top[token_text(alt_id, alt)] = _finite(alt.logprob)
            out.top_logprobs.append(top)
        out.text_offset.append(offset)
        offset += len(text)
    return out


def next_text_offset(logprobs: CompletionLogProbs, default: int = 0) -> int:
    """Where the token after `logprobs`' last one starts (offsets stay monotonic even when
    the echoed prompt text hides special tokens such as BOS)."""
    if not logprobs.tokens:
        return default
    return logprobs.text_offset[-1] + len(logprobs.tokens[-1])


def chat_logprobs(
    token_ids: Sequence[int],
    positions: Sequence[dict[int, Logprob]],
    token_text: TokenText,
    *,
    num_top: int,
) -> ChatCompletionLogProbs:
    """The chat `logprobs` object: content[] with token, logprob, bytes, top_logprobs."""
    content = []
    for token_id, entries in zip(token_ids, positions):
        chosen = entries.get(token_id)
        text = token_text(token_id, chosen)
        alternatives = [
            ChatCompletionLogProb(
                token=token_text(alt_id, alt),
                logprob=_finite(alt.logprob),
                bytes=list(token_text(alt_id, alt).encode("utf-8", errors="replace")),
            )
            for alt_id, alt in sorted(entries.items(), key=lambda kv: kv[1].rank or 0)
            if alt.rank is not None and 1 <= alt.rank <= num_top
        ][:num_top]
        content.append(
            ChatCompletionLogProbsContent(
                token=text,
                logprob=_finite(chosen.logprob) if chosen else _NEG_INF_STANDIN,
                bytes=list(text.encode("utf-8", errors="replace")),
                top_logprobs=alternatives,
            )
        )
    return ChatCompletionLogProbs(content=content)


def prompt_logprobs_json(
    positions: Sequence[dict[int, Logprob] | None] | None, token_text: TokenText
) -> list[dict[int, dict[str, Any]] | None] | None:
    """vLLM's `prompt_logprobs` field: per prompt position None (the first) or
    {token_id: {"logprob", "rank", "decoded_token"}}."""
    if positions is None:
        return None
    return [
        None
        if entries is None
        else {
            token_id: {
                "logprob": _finite(lp.logprob),
                "rank": lp.rank,
                "decoded_token": token_text(token_id, lp),
            }
            for token_id, lp in entries.items()
        }
        for entries in positions
    ]
