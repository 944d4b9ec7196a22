"""Prompts and request parameters, checked once against the model before they enter the engine.

One `InputProcessor` per engine holds the limits a request is validated against: the model's
vocabulary size (the embedding's rows: the one vocabulary every token id is checked against,
for generation and pooling alike), the usable context (`max_seq_len`, capped by the KV
cache), `max_num_seqs` and `max_logprobs`. It touches no engine state, so `AsyncLLM` runs
it off the step loop's thread; the engine then admits the already-checked token ids.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mono_llm.core.errors import (
    InvalidRequestError,
    PromptTooLongError,
    UnsupportedTaskError,
    check_prompt_chars,
)
from mono_llm.core.inputs import PromptType, parse_prompt
from mono_llm.core.multimodal.prompt import attach_media
from mono_llm.core.pooling_params import PoolingParams
from mono_llm.core.sampling_params import MAX_LOGIT_BIAS, SamplingParams

if TYPE_CHECKING:
    from mono_llm.core.config import ModelConfig
    from mono_llm.core.pooling.engine import PoolingEngine


class InputProcessor:
    """Tokenizes and validates prompts; validates and resolves sampling parameters."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        vocab_size: int,
        max_seq_len: int,
        max_num_seqs: int,
        max_logprobs: int,
        eos_token_ids: set[int],
        structured_outputs_available: bool,
        pooling: PoolingEngine | None,
        model_config: ModelConfig | None = None,
        check_multimodal_item: Callable[[Any], None] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.max_seq_len = max_seq_len
        self.max_num_seqs = max_num_seqs
        self.max_logprobs = max_logprobs
        self.eos_token_ids = eos_token_ids
        self.structured_outputs_available = structured_outputs_available
        self.pooling = pooling
        # Media prompts: the model's limits and placeholder token (config), and the model's
        # own check of an item (pixel shapes, token counts), run before admission.
        self.model_config = model_config
        self.check_multimodal_item = check_multimodal_item

    # ------------------------------------------------------------------ prompts

    def process_prompt(
        self, prompt: PromptType, params: SamplingParams | None
    ) -> tuple[str | None, list[int]]:
        """(text, token ids) of a generation prompt: tokenized, truncated, checked."""
        text, token_ids = parse_prompt(prompt)
        if token_ids is None and (params is None or params.truncate_prompt_tokens is None):
            check_prompt_chars(text or "", self.max_seq_len)  # before tokenizing all of it
        if token_ids is None:
            token_ids = self.tokenizer.encode(text, add_special_tokens=True)
        mm_data = prompt.get("multi_modal_data") if isinstance(prompt, dict) else None
        if mm_data is not None:
            token_ids = self._attach_media(token_ids, mm_data, params)
        elif params is not None and params.truncate_prompt_tokens is not None:
            token_ids = token_ids[-params.truncate_prompt_tokens :]
        if not token_ids:
            raise InvalidRequestError("The prompt must not be empty.", param="prompt")
        # A generation prompt leaves room for at least one new token.
        limit = self.max_seq_len - 1 if params is not None else self.max_seq_len
        if len(token_ids) > limit:
            raise PromptTooLongError(len(token_ids), self.max_seq_len)
        self.check_in_vocabulary(token_ids, param="prompt_token_ids")
        return text, token_ids

    def _attach_media(
        self, token_ids: list[int], mm_data: Any, params: SamplingParams | None
    ) -> list[int]:
        """The ids with image placeholders widened, carrying the checked items."""
        if self.model_config is None:
            raise InvalidRequestError("This engine takes no media inputs.", param="prompt")
        token_ids = attach_media(self.model_config, token_ids, mm_data, params)
        if self.check_multimodal_item is not None:
            for item in getattr(token_ids, "mm_items", ()):
                self.check_multimodal_item(item)
        return token_ids

    def process_pooling_prompt(
        self, prompt: PromptType, params: PoolingParams
    ) -> tuple[str | None, list[int], PoolingParams]:
        """(text, token ids, params with the task resolved) of a pooling prompt. The pooling
        engine owns the pooling-specific rules (task, truncation keeping [CLS], lower-casing);
        the vocabulary check is the same as for generation."""
        if self.pooling is None:
            raise UnsupportedTaskError(params.task or "embed", ["generate"])
        text, token_ids, params = self.pooling.prepare(self.tokenizer, prompt, params)
        self.check_in_vocabulary(token_ids, param="input")
        return text, token_ids, params

    def check_in_vocabulary(self, token_ids: list[int], *, param: str) -> None:
        if max(token_ids) >= self.vocab_size or min(token_ids) < 0:
            raise InvalidRequestError(
                f"Token id {max(token_ids)} is out of vocabulary (size {self.vocab_size}).",
                param=param,
            )

    # ------------------------------------------------------------------ sampling params

    def validate_sampling_params(self, params: SamplingParams) -> SamplingParams:
        """Check params against this model and resolve its stop tokens (returns a copy)."""
        if self.pooling is not None:
            self.pooling.reject_generation()  # a pooling model cannot generate
        # Each candidate is a sequence the scheduler must hold at once with its siblings; a
        # huge n would also build millions of sequences inside the engine loop, stalling
        # every other request (n=10**6 did), so it is refused up front.
        if params.num_candidates > self.max_num_seqs:
            name = "best_of" if (params.best_of or 0) > params.n else "n"
            raise InvalidRequestError(
                f"{name}={params.num_candidates} is more than the {self.max_num_seqs} "
                "sequences this engine runs at once (--max-num-seqs).",
                param=name,
            )
        max_logprobs = self.max_logprobs
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(params, name)
            if value is not None and max_logprobs != -1 and (value == -1 or value > max_logprobs):
                raise InvalidRequestError(
                    f"Requested {name}={value}, more than the maximum allowed {max_logprobs}.",
                    param=name,
                )
        for name, ids in (
            ("logit_bias", list((params.logit_bias or {}).keys())),
            ("allowed_token_ids", params.allowed_token_ids or []),
            ("stop_token_ids", params.stop_token_ids or []),
        ):
            bad = [t for t in ids if not 0 <= int(t) < self.vocab_size]
            if bad:
                raise InvalidRequestError(
                    f"{name} contains token ids out of vocabulary: {bad[:5]}.", param=name
                )
        if params.allowed_token_ids is not None and not params.allowed_token_ids:
            raise InvalidRequestError(
                "allowed_token_ids must not be empty.", param="allowed_token_ids"
            )
        structured = params.structured_outputs
        wants_grammar = structured is not None and not structured.is_empty
        if wants_grammar and not self.structured_outputs_available:
            raise InvalidRequestError(
                "Structured outputs are not available on this engine.",
                param="structured_outputs",
            )
        stop_ids = set(params.stop_token_ids or [])
        if not params.ignore_eos:
            stop_ids |= self.eos_token_ids
        return params.clone(
            logit_bias={
                int(k): max(-MAX_LOGIT_BIAS, min(MAX_LOGIT_BIAS, float(v)))
                for k, v in params.logit_bias.items()
            }
            if params.logit_bias
            else None,
            all_stop_token_ids=stop_ids,
        )

    def bad_words_token_ids(self, words: list[str] | None) -> list[list[int]]:
        """Token sequences of each bad word, alone and after a space (as vLLM tokenizes them)."""
        sequences: list[list[int]] = []
        for word in words or []:
            for variant in (word, " " + word.lstrip()):
                ids = self.tokenizer.encode(variant, add_special_tokens=False)
                if ids and ids not in sequences and max(ids) < self.vocab_size:
                    sequences.append(ids)
        return sequences
