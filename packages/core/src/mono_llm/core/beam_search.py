"""Beam search over the engine: each step runs every live beam as a one-token request with
the top 2×width log-probabilities, and keeps the best `width` continuations.

The engine has no beam-aware scheduler; running each step as ordinary requests keeps the
engine unchanged, and prefix caching makes the repeated prompts cheap (every beam's prompt
is the previous step's plus one token). The selection follows Hugging Face's beam search:
candidates are the top 2×width (beam score + token log-probability) over all beams; an
end-of-sequence candidate among the first `width` finishes a hypothesis, the best `width`
others carry on. Hypotheses are ranked by cumulative log-probability divided by
(generated length ** length_penalty).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from mono_llm.core.errors import InvalidRequestError
from mono_llm.core.outputs import Logprob
from mono_llm.core.sampling_params import RequestOutputKind, SamplingParams


@dataclass(slots=True)
class BeamSearchParams:
    """Beam search settings (vLLM's names)."""

    beam_width: int
    max_tokens: int
    ignore_eos: bool = False
    temperature: float = 0.0  # accepted for vLLM compatibility; beams are ranked greedily
    length_penalty: float = 1.0
    include_stop_str_in_output: bool = False

    def __post_init__(self) -> None:
        if self.beam_width < 1:
            raise InvalidRequestError("beam_width must be at least 1.", param="beam_width")
        if self.max_tokens < 1:
            raise InvalidRequestError("max_tokens must be at least 1.", param="max_tokens")


@dataclass(slots=True)
class BeamSearchSequence:
    """One hypothesis: all its tokens (prompt first, as vLLM) and what it generated."""

    tokens: list[int]
    prompt_len: int
    cum_logprob: float = 0.0
    finish_reason: str | None = None  # "stop" (end of sequence) or "length"
    text: str = ""  # the generated text

    @property
    def output_tokens(self) -> list[int]:
        return self.tokens[self.prompt_len :]

    def score(self, length_penalty: float) -> float:
        return self.cum_logprob / (max(len(self.output_tokens), 1) ** length_penalty)


@dataclass(slots=True)
class BeamSearchOutput:
    """The best `beam_width` hypotheses of one prompt, best first."""

    sequences: list[BeamSearchSequence] = field(default_factory=list)


def step_params(params: BeamSearchParams) -> SamplingParams:
    """The one-token request each live beam runs at every step."""
    return SamplingParams(
        max_tokens=1,
        temperature=0.0,
        logprobs=2 * params.beam_width,
        ignore_eos=True,
        detokenize=False,
        output_kind=RequestOutputKind.FINAL_ONLY,
    )


def _advance(
    beams: list[BeamSearchSequence],
    step_logprobs: list[dict[int, Logprob]],
    params: BeamSearchParams,
    eos_token_ids: set[int],
    finished: list[BeamSearchSequence],
) -> list[BeamSearchSequence]:
    """The beams of the next step; finished hypotheses are appended to `finished`."""
    width = params.beam_width
    candidates = [
        (beam.cum_logprob + logprob.logprob, index, token)
        for index, (beam, logprobs) in enumerate(zip(beams, step_logprobs, strict=True))
        for token, logprob in logprobs.items()
    ]
    candidates.sort(key=lambda c: c[0], reverse=True)
    running: list[BeamSearchSequence] = []
    for rank, (score, index, token) in enumerate(candidates[: 2 * width]):
        beam = beams[index]
        grown = BeamSearchSequence([*beam.tokens, token], beam.prompt_len, score)
        if token in eos_token_ids and not params.ignore_eos:
            if rank < width:
                grown.finish_reason = "stop"
                finished.append(grown)
            continue
        running.append(grown)
        if len(running) == width:
            break
    return running


def _best(
    finished: list[BeamSearchSequence], running: list[BeamSearchSequence], params: BeamSearchParams
) -> list[BeamSearchSequence]:
    for beam in running:
        beam.finish_reason = "length"
    every = finished + running
    every.sort(key=lambda b: b.score(params.length_penalty), reverse=True)
    return every[: params.beam_width]


class BeamSearch:
    """One prompt's search, advanced one step at a time (so a caller can run the beams of
    many prompts as one batch of engine requests per step)."""

    def __init__(
        self, prompt_token_ids: list[int], params: BeamSearchParams, eos: set[int]
    ) -> None:
        self.params = params
        self.eos = eos
        self.beams = [BeamSearchSequence(list(prompt_token_ids), len(prompt_token_ids))]
        self.finished: list[BeamSearchSequence] = []
        self.steps = 0

    @property
    def done(self) -> bool:
        return (
            not self.beams
            or self.steps >= self.params.max_tokens
            or _settled(self.finished, self.beams, self.params)
        )

    def prompts(self) -> list[list[int]]:
        """The token lists to run for the next step (one per live beam)."""
        return [beam.tokens for beam in self.beams]

    def advance(self, step_logprobs: list[dict[int, Logprob]]) -> None:
        self.beams = _advance(self.beams, step_logprobs, self.params, self.eos, self.finished)
        self.steps += 1

    def result(self) -> list[BeamSearchSequence]:
        return _best(self.finished, self.beams, self.params)


def beam_search(
    prompt_token_ids: list[int],
    params: BeamSearchParams,
    eos_token_ids: set[int],
    step: Callable[[list[list[int]]], list[dict[int, Logprob]]],
) -> list[BeamSearchSequence]:
    """Beam search with a synchronous `step` (token lists -> next-token log-probabilities)."""
    search = BeamSearch(prompt_token_ids, params, eos_token_ids)
    while not search.done:
        search.advance(step(search.prompts()))
    return search.result()


async def beam_search_async(
    prompt_token_ids: list[int],
    params: BeamSearchParams,
    eos_token_ids: set[int],
    step: Callable[[list[list[int]]], Awaitable[list[dict[int, Logprob]]]],
) -> list[BeamSearchSequence]:
    """`beam_search` with an asynchronous `step` (the server's engine)."""
    search = BeamSearch(prompt_token_ids, params, eos_token_ids)
    while not search.done:
        search.advance(await step(search.prompts()))
    return search.result()


def _settled(
    finished: list[BeamSearchSequence], running: list[BeamSearchSequence], params: BeamSearchParams
) -> bool:
    """True once `width` hypotheses have finished and no running beam can still beat the
    worst of them (log-probabilities only fall as a beam grows)."""
    if len(finished) < params.beam_width or not running:
        return len(finished) >= params.beam_width
    worst = sorted(b.score(params.length_penalty) for b in finished)[-params.beam_width]
    best_running = max(b.score(params.length_penalty) for b in running)
    return params.length_penalty >= 0 and best_running <= worst
