"""Whisper's decoder side in tokens: special-token ids, decoder prompts, timestamp segments.

A Whisper request decodes from a prompt of special tokens:

    [<|startofprev|> previous-text-tokens]? <|startoftranscript|> [<|lang|> <|task|>]? [<|notimestamps|>]?

(`.en` checkpoints have no language or task tokens). With timestamps on, the model writes
`<|t0|> text <|t1|>` pairs, times in 0.02 s steps from `<|0.00|>`; `segments` turns them back
into timed text. The ids come from the checkpoint's own tokenizer, so every size and
vocabulary (multilingual 51865 / 51866 tokens, English-only 51864) reads the same way.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mono_llm.core.errors import InvalidRequestError
from mono_llm.core.sampling_params import MAX_LOGIT_BIAS

TIME_PRECISION_S = 0.02  # one timestamp token step
# Whisper's previous-text prompt keeps at most half of its 448-token context.
MAX_PREVIOUS_TOKENS = 223
# Logit bias that bans a token: the engine's largest (|bias| <= 100); Whisper's logits span a
# few tens, so a banned token is never picked, greedy or sampled (its odds fall by e^-100).
BANNED = -MAX_LOGIT_BIAS
_MULTILINGUAL_VOCAB = 51865


@dataclass(slots=True)
class WhisperTokens:
    """The special-token ids of one Whisper checkpoint."""

    start_of_transcript: int
    end_of_text: int
    transcribe: int | None
    translate: int | None
    no_timestamps: int
    start_of_prev: int | None
    no_speech: int | None
    timestamp_begin: int
    languages: dict[str, int] = field(default_factory=dict)  # code -> token id
    suppress: list[int] = field(default_factory=list)  # generation_config.suppress_tokens

    @property
    def is_multilingual(self) -> bool:
        return bool(self.languages)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, model_dir: str | Path | None = None) -> WhisperTokens:
        def tid(token: str) -> int | None:
            value = tokenizer.convert_tokens_to_ids(token)
            if not isinstance(value, int) or value < 0:
                return None
            # Unknown tokens map to unk (for Whisper, <|endoftext|>): check the way back.
            return value if tokenizer.convert_ids_to_tokens(value) == token else None

        sot, eot = tid("<|startoftranscript|>"), tid("<|endoftext|>")
        no_ts, ts0 = tid("<|notimestamps|>"), tid("<|0.00|>")
        if None in (sot, eot, no_ts, ts0):
            raise InvalidRequestError("The tokenizer is not a Whisper tokenizer.", param="model")
        translate = tid("<|translate|>")
        generation: dict[str, Any] = {}
        if model_dir is not None:
            path = Path(model_dir) / "generation_config.json"
            if path.is_file():
                generation = json.loads(path.read_text())
        # generation_config.json says whether the model is multilingual (English-only
        # vocabularies still list language and task tokens their models never learned);
        # without it, the vocabulary size does: 51864 English-only, 51865+ multilingual.
        multilingual = generation.get("is_multilingual")
        if multilingual is None:
            multilingual = len(tokenizer) >= _MULTILINGUAL_VOCAB
        languages: dict[str, int] = {}
        if multilingual and isinstance(generation.get("lang_to_id"), dict):
            languages = {k[2:-2]: int(v) for k, v in generation["lang_to_id"].items()}
        elif multilingual and translate is not None:
            # language tokens sit between <|startoftranscript|> and the task tokens
            for token_id in range(sot + 1, translate):
                token = tokenizer.convert_ids_to_tokens(token_id)
                if isinstance(token, str) and token.startswith("<|") and token.endswith("|>"):
                    languages[token[2:-2]] = token_id
        suppress = [int(t) for t in generation.get("suppress_tokens") or []]
        return cls(
            start_of_transcript=sot,
            end_of_text=eot,
            transcribe=tid("<|transcribe|>"),
            translate=translate,
            no_timestamps=no_ts,
            start_of_prev=tid("<|startofprev|>"),
            no_speech=tid("<|nospeech|>") or tid("<|nocaptions|>"),
            timestamp_begin=ts0,
            languages=languages,
            suppress=suppress,
        )

    def logit_bias(self) -> dict[int, float]:
        """Tokens a transcript never contains (generation_config's suppress list and the
        prompt's special tokens, as OpenAI's decoder suppresses them), as a banning bias."""
        banned = set(self.suppress)
        banned.update(
            t
            for t in (
                self.start_of_transcript,
                self.start_of_prev,
                self.transcribe,
                self.translate,
                self.no_speech,
                self.no_timestamps,
            )
            if t is not None
        )
        banned.update(self.languages.values())
        return {t: BANNED for t in banned}

    def decoder_prompt(
        self,
        *,
        language: str | None,
        task: str = "transcribe",
        timestamps: bool = False,
        previous: list[int] | None = None,
    ) -> list[int]:
        """The token ids the decoder starts from."""
        prompt: list[int] = []
        if previous:
            if self.start_of_prev is None:
                raise InvalidRequestError("This model takes no text prompt.", param="prompt")
            prompt += [self.start_of_prev, *previous[-MAX_PREVIOUS_TOKENS:]]
        prompt.append(self.start_of_transcript)
        if self.is_multilingual:
            code = language or "en"
            if code not in self.languages:
                raise InvalidRequestError(
                    f"Unsupported language {code!r}; this model knows "
                    f"{', '.join(sorted(self.languages))}.",
                    param="language",
                )
            task_id = self.translate if task == "translate" else self.transcribe
            assert task_id is not None
            prompt += [self.languages[code], task_id]
        elif task == "translate":
            raise InvalidRequestError(
                "This is an English-only Whisper checkpoint: it cannot translate. Use a "
                "multilingual one.",
                param="model",
            )
        if not timestamps:
            prompt.append(self.no_timestamps)
        return prompt

    def time_of(self, token_id: int) -> float:
        return (token_id - self.timestamp_begin) * TIME_PRECISION_S


@dataclass(slots=True)
class Segment:
    """Timed text, shaped as OpenAI's verbose_json segments."""

    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


def language_name(code: str) -> str:
    """Whisper's English name of a language code ("en" -> "english"), as OpenAI reports it."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return LANGUAGES.get(code, code)


def compression_ratio(text: str) -> float:
    """Bytes of the text over bytes zlib makes of it (high: repetitive, a decoding loop)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def split_timed(
    token_ids: list[int], tokens: WhisperTokens, duration_s: float
) -> list[tuple[float, float, list[int]]]:
    """(start, end, text token ids) per segment of one window's output, times in the window.

    Timestamps come in pairs around each segment; text before any timestamp starts at 0 and
    text after the last one ends at the window's end. Without timestamp tokens the whole
    output is one segment spanning the window.
    """
    out: list[tuple[float, float, list[int]]] = []
    start: float | None = None
    text: list[int] = []
    for token in token_ids:
        if token == tokens.end_of_text:
            break
        if token >= tokens.timestamp_begin:
            time = min(tokens.time_of(token), duration_s)
            if text:
                out.append((0.0 if start is None else start, time, text))
                text, start = [], None
            else:
                start = time
        elif token < tokens.end_of_text:  # a text token (special tokens are above it)
            text.append(token)
    if text:
        out.append((0.0 if start is None else start, duration_s, text))
    return out
