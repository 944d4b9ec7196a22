"""How to sample one request: the knobs of vLLM's `SamplingParams`, with the same names.

Validation lives here (not in the API layer) so that offline `LLM` users get the same
errors as HTTP clients; every error names the parameter it is about.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any

from mono_llm.core.errors import InvalidRequestError

# Below this temperature sampling is treated as greedy: dividing logits by ~0 overflows.
_GREEDY_EPSILON = 1e-5
# Seeds are int64, as vLLM's protocol bounds them (torch generators take any 64-bit value).
_SEED_MIN, _SEED_MAX = -(2**63), 2**63 - 1
# Float knobs that must be finite: a NaN slips through every range comparison below and
# turns the sampler's probabilities into NaN, which fails the whole batch's step.
_FINITE_FIELDS = (
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "temperature",
    "top_p",
    "min_p",
)
# Stop strings are matched against the new text of every sequence at every step: their number
# and length bound that work (10,000 strings of 1 KB made one request's steps take seconds and
# slowed every other request in the batch). OpenAI allows 4; these leave room for tool-call
# markers and long stop phrases.
MAX_STOP_STRINGS = 128
MAX_STOP_STRING_CHARS = 1024
# logit_bias values are clamped to this magnitude (as vLLM): past it a bias already forces or
# forbids a token, and larger values only risk overflow in the logits.
MAX_LOGIT_BIAS = 100.0


class RequestOutputKind(enum.Enum):
    """What each streamed `RequestOutput` carries."""

    CUMULATIVE = 0  # all text and tokens so far
    DELTA = 1  # only what is new since the previous output
    FINAL_ONLY = 2  # one output, when the request finishes


@dataclass(slots=True)
class StructuredOutputsParams:
    """Constrain generation to a JSON schema, regex, choice list or grammar (exactly one)."""

    json: str | dict[str, Any] | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: str | None = None
    # JSON options (vLLM's names): no whitespace between JSON tokens; whether objects may
    # hold properties their schema does not list (None: xgrammar's strict default, no);
    # a regex for the whitespace allowed between JSON tokens.
    disable_any_whitespace: bool = False
    disable_additional_properties: bool | None = None
    whitespace_pattern: str | None = None
    # A reasoning model's end-of-thinking marker (e.g. "</think>"): the constraint applies
    # only to what is generated after it, so the model thinks freely first.
    reasoning_end: str | None = None

    def __post_init__(self) -> None:
        given = [
            name
            for name in ("json", "regex", "choice", "grammar", "json_object", "structural_tag")
            if getattr(self, name) not in (None, False)
        ]
        if len(given) > 1:
            raise InvalidRequestError(
                f"Only one kind of structured output may be requested, got: {', '.join(given)}.",
                param="structured_outputs",
            )
        if self.choice is not None and len(self.choice) == 0:
            raise InvalidRequestError("choice must not be empty.", param="structured_outputs")

    @property
    def is_empty(self) -> bool:
        return all(
            getattr(self, name) in (None, False)
            for name in ("json", "regex", "choice", "grammar", "json_object", "structural_tag")
        )


@dataclass(slots=True)
class SamplingParams:
    """Sampling parameters for text generation (vLLM-compatible field names and defaults)."""

    n: int = 1
    best_of: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: no top-k
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16  # None: up to the context window
    min_tokens: int = 0
    logprobs: int | None = None  # top-N logprobs per generated token (-1: whole vocab)
    prompt_logprobs: int | None = None
    detokenize: bool = True
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    truncate_prompt_tokens: int | None = None
    structured_outputs: StructuredOutputsParams | None = None
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    extra_args: dict[str, Any] | None = None
    # Token ids that end generation besides stop_token_ids (the model's EOS tokens). Set by the
    # engine from the tokenizer/generation config; not a user knob.
    all_stop_token_ids: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        elif self.stop is None:
            self.stop = []
        else:
            self.stop = list(self.stop)
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.top_k == -1:
            self.top_k = 0
        if self.seed == -1:
            self.seed = None
        self._validate()
        self.all_stop_token_ids = set(self.all_stop_token_ids) | set(self.stop_token_ids)

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        def bad(message: str, param: str) -> InvalidRequestError:
            return InvalidRequestError(message, param=param)

        if not isinstance(self.n, int) or self.n < 1:
            raise bad(f"n must be at least 1, got {self.n}.", "n")
        for name in _FINITE_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise bad(f"{name} must be a finite number, got {value!r}.", name)
        if self.seed is not None and not _SEED_MIN <= self.seed <= _SEED_MAX:
            raise bad(f"seed must fit in a signed 64-bit integer, got {self.seed}.", "seed")
        if self.logit_bias and not all(
            isinstance(v, (int, float)) and math.isfinite(v) for v in self.logit_bias.values()
        ):
            raise bad("logit_bias values must be finite numbers.", "logit_bias")
        if self.best_of is not None and self.best_of < self.n:
            raise bad(
                f"best_of must be greater than or equal to n, got n={self.n} and "
                f"best_of={self.best_of}.",
                "best_of",
            )
        if not -2.0 <= self.presence_penalty <= 2.0:
            raise bad(
                f"presence_penalty must be in [-2, 2], got {self.presence_penalty}.",
                "presence_penalty",
            )
        if not -2.0 <= self.frequency_penalty <= 2.0:
            raise bad(
                f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}.",
                "frequency_penalty",
            )
        if self.repetition_penalty <= 0.0:
            raise bad(
                f"repetition_penalty must be greater than zero, got {self.repetition_penalty}.",
                "repetition_penalty",
            )
        if self.temperature < 0.0:
            raise bad(f"temperature must be non-negative, got {self.temperature}.", "temperature")
        if not 0.0 < self.top_p <= 1.0:
            raise bad(f"top_p must be in (0, 1], got {self.top_p}.", "top_p")
        if self.top_k < 0:
            raise bad(
                f"top_k must be -1 (disable), 0 (disable) or at least 1, got {self.top_k}.", "top_k"
            )
        if not 0.0 <= self.min_p <= 1.0:
            raise bad(f"min_p must be in [0, 1], got {self.min_p}.", "min_p")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise bad(f"max_tokens must be at least 1, got {self.max_tokens}.", "max_tokens")
        if self.min_tokens < 0:
            raise bad(
                f"min_tokens must be greater than or equal to 0, got {self.min_tokens}.",
                "min_tokens",
            )
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise bad(
                f"min_tokens must be less than or equal to max_tokens={self.max_tokens}, got "
                f"{self.min_tokens}.",
                "min_tokens",
            )
        if self.logprobs is not None and self.logprobs < -1:
            raise bad(f"logprobs must be non-negative or -1, got {self.logprobs}.", "logprobs")
        if self.prompt_logprobs is not None and self.prompt_logprobs < -1:
            raise bad(
                f"prompt_logprobs must be non-negative or -1, got {self.prompt_logprobs}.",
                "prompt_logprobs",
            )
        if self.truncate_prompt_tokens is not None and self.truncate_prompt_tokens < 1:
            raise bad(
                f"truncate_prompt_tokens must be at least 1, got {self.truncate_prompt_tokens}.",
                "truncate_prompt_tokens",
            )
        if any(not s for s in self.stop):  # type: ignore[union-attr]
            raise bad("stop strings must not be empty.", "stop")
        if len(self.stop) > MAX_STOP_STRINGS:  # type: ignore[arg-type]
            raise bad(
                f"stop may hold at most {MAX_STOP_STRINGS} strings, got {len(self.stop)}.",  # type: ignore[arg-type]
                "stop",
            )
        longest = max((len(s) for s in self.stop), default=0)  # type: ignore[union-attr]
        if longest > MAX_STOP_STRING_CHARS:
            raise bad(
                f"stop strings may be at most {MAX_STOP_STRING_CHARS} characters long, got "
                f"one of {longest}.",
                "stop",
            )

    # ------------------------------------------------------------------ derived
    @property
    def is_greedy(self) -> bool:
        return self.temperature < _GREEDY_EPSILON

    @property
    def num_candidates(self) -> int:
        """How many sequences to generate (best_of when it exceeds n)."""
        return max(self.n, self.best_of or self.n)

    @property
    def needs_logprobs(self) -> bool:
        """Whether the sampler computes logprobs for this request's rows: they were asked
        for, or best_of > n ranks the candidates by their cumulative logprob."""
        return self.logprobs is not None or self.num_candidates > self.n

    def clone(self, **changes: Any) -> SamplingParams:
        """A copy with some fields changed (re-validated)."""
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        values.update(changes)
        return SamplingParams(**values)
