"""Request and sequence state shared by the scheduler, the KV cache manager and the engine.

A user request (`Request`) owns one `Sequence` per sampled candidate (n, or best_of). The
scheduler and the KV cache only ever see `Sequence`s and reason in token counts
(`num_tokens`, `num_computed_tokens`), so a sequence that pools instead of samples
schedules exactly like one that generates and simply finishes after its prefill.
"""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mono_llm.core.outputs import Logprob, RequestMetrics
from mono_llm.core.sampling_params import SamplingParams

if TYPE_CHECKING:
    import torch

    from mono_llm.core.engine.detokenizer import IncrementalDetokenizer
    from mono_llm.core.multimodal.inputs import MultiModalItem

_arrival_counter = itertools.count()


class SequenceStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2  # back in the waiting queue; its KV blocks were freed (recompute)
    FINISHED_STOPPED = 3
    FINISHED_LENGTH = 4
    FINISHED_ABORTED = 5

    @property
    def is_finished(self) -> bool:
        return self >= SequenceStatus.FINISHED_STOPPED

    @property
    def finish_reason(self) -> str | None:
        return {
            SequenceStatus.FINISHED_STOPPED: "stop",
            SequenceStatus.FINISHED_LENGTH: "length",
            SequenceStatus.FINISHED_ABORTED: "abort",
        }.get(self)


class Sequence:
    """One token stream: prompt then generated tokens, and how much of it is in the KV cache."""

    def __init__(
        self,
        seq_id: str,
        request_id: str,
        index: int,
        prompt_token_ids: list[int],
        *,
        sampling_params: SamplingParams | None = None,
        pooling_params: Any = None,
        max_tokens: int = 1,
        priority: int = 0,
        arrival_time: float | None = None,
        mm_items: list[MultiModalItem] | None = None,
    ) -> None:
        self.seq_id = seq_id
        self.request_id = request_id
        self.index = index
        self.token_ids: list[int] = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        # Images (and later other media) of the prompt, in prompt order, with their spans.
        self.mm_items: list[MultiModalItem] = mm_items or []
        # Models with M-RoPE (Qwen2-VL): 3-D rope positions of the prompt [3, prompt_len]
        # when it holds media, and the shift of every later position (see layers/mrope.py).
        self.mrope_positions: Any = None
        self.mrope_delta = 0
        self.sampling_params = sampling_params
        self.pooling_params = pooling_params
        self.max_tokens = max_tokens  # resolved: never past the context window
        self.priority = priority
        self.arrival_time = time.time() if arrival_time is None else arrival_time
        # Ties in (priority, arrival) break by admission order: strict FCFS.
        self.arrival_index = next(_arrival_counter)
        self.status = SequenceStatus.WAITING
        self.num_computed_tokens = 0
        self.num_cached_tokens = -1  # prefix-cache hit at first admission (-1: not yet)
        self.num_preemptions = 0
        self.stop_reason: int | str | None = None
        # Chained hashes of this sequence's full KV blocks (kept by the KV cache manager; valid
        # across preemptions because tokens are only ever appended).
        self.block_hashes: list[bytes] = []
        # n > 1: siblings wait until the first one has computed the prompt, so they find its
        # KV blocks in the prefix cache instead of recomputing them.
        self.wait_for: Sequence | None = None
        # The sibling whose prompt blocks this one shares when the prefix cache is off.
        self.prompt_leader: Sequence | None = None
        # Filled by the engine (sampling side); the scheduler never reads these.
        self.generator: torch.Generator | None = None
        self.cumulative_logprob = 0.0
        self.logprobs: list[dict[int, Logprob]] = []
        self.prompt_logprobs: list[dict[int, Logprob] | None] = []
        self.detokenizer: IncrementalDetokenizer | None = None
        self.grammar: Any = None  # structured-output matcher (see sampler.StructuredOutputGrammar)
        self.bad_words_token_ids: list[list[int]] = []  # token sequences never to complete
        self.pooled: Any = None
        # Encoder–decoder models: the request's encoder input (e.g. Whisper's log-mel
        # features, on the host) and its cost in the step's token budget, paid each time
        # the sequence is admitted (the encoder runs again after a preemption).
        self.encoder_features: Any = None
        self.encoder_cost = 0

    # ------------------------------------------------------------------ token counts
    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def is_prefill_done(self) -> bool:
        return self.num_computed_tokens >= self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    @property
    def is_pooling(self) -> bool:
        return self.sampling_params is None

    @property
    def wants_prompt_logprobs(self) -> bool:
        sp = self.sampling_params
        return sp is not None and sp.prompt_logprobs is not None

    def sort_key(self) -> tuple[int, float, int]:
        """Lower runs first: priority, then arrival (FCFS)."""
        return (self.priority, self.arrival_time, self.arrival_index)

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)

    def __repr__(self) -> str:
        return (
            f"Sequence({self.seq_id!r}, status={self.status.name}, tokens={self.num_tokens}, "
            f"computed={self.num_computed_tokens})"
        )


@dataclass(slots=True)
class Request:
    """A user request: its prompt, parameters and candidate sequences."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    sampling_params: SamplingParams | None
    sequences: list[Sequence]
    metrics: RequestMetrics
    # DELTA outputs: how much of each sequence's text/tokens/logprobs was already sent.
    sent_text_len: list[int] = field(default_factory=list)
    sent_tokens: list[int] = field(default_factory=list)
    sent_prompt_logprobs: bool = False

    @property
    def is_finished(self) -> bool:
        return all(seq.is_finished for seq in self.sequences)
