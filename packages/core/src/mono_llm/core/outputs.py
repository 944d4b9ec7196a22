"""What the engine hands back: vLLM-shaped `RequestOutput`s and engine statistics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar


@dataclass(slots=True)
class Logprob:
    """Log-probability of one token, with its rank in the distribution (1 = most likely)."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


# One dict per position: token id -> Logprob (the sampled token plus the top-N alternatives).
SampleLogprobs = list[dict[int, Logprob]]
# Same for prompt positions; the first prompt token has no logprob (None).
PromptLogprobs = list[dict[int, Logprob] | None]


@dataclass(slots=True)
class CompletionOutput:
    """One generated sequence of a request (a request with n > 1 has n of them)."""

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: SampleLogprobs | None = None
    finish_reason: str | None = None  # "stop" | "length" | "abort" | None while running
    stop_reason: int | str | None = None  # the stop string or stop token id that ended it

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(slots=True)
class RequestMetrics:
    """Timestamps (time.time()) of a request's life, for latency metrics."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None


@dataclass(slots=True)
class RequestOutput:
    """The state of one request after an engine step (cumulative or delta, per output_kind)."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: PromptLogprobs | None
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0
    metrics: RequestMetrics | None = None


@dataclass(slots=True)
class SchedulerStats:
    """A snapshot of the engine's load, read by the server's /metrics."""

    num_running_reqs: int = 0
    num_waiting_reqs: int = 0
    kv_cache_usage: float = 0.0  # fraction of KV blocks in use, 0..1
    num_preemptions: int = 0  # cumulative
    prefix_cache_queries: int = 0  # cumulative tokens looked up
    prefix_cache_hits: int = 0  # cumulative tokens found
    num_prompt_tokens: int = 0  # cumulative
    num_generation_tokens: int = 0  # cumulative
    extra: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------- pooling
# vLLM's shapes: a pooling request yields one PoolingRequestOutput whose `outputs.data` is the
# pooled tensor; the typed views (embedding / classification / score) are built from it.
_O = TypeVar("_O")


@dataclass(slots=True)
class PoolingOutput:
    """The pooled result of one prompt: an embedding, class probabilities or logits."""

    data: Any  # torch.Tensor [hidden] (float32, on CPU); Any keeps this module torch-free


@dataclass(slots=True)
class PoolingRequestOutput(Generic[_O]):
    """A finished pooling request (pooling requests finish after their prefill)."""

    request_id: str
    outputs: _O
    prompt_token_ids: list[int]
    finished: bool = True
    num_cached_tokens: int = 0
    metrics: RequestMetrics | None = None
    prompt: str | None = None


@dataclass(slots=True)
class EmbeddingOutput:
    embedding: list[float]

    @classmethod
    def from_base(cls, output: PoolingOutput) -> EmbeddingOutput:
        return cls(embedding=output.data.tolist())

    @property
    def hidden_size(self) -> int:
        return len(self.embedding)


@dataclass(slots=True)
class ClassificationOutput:
    probs: list[float]

    @classmethod
    def from_base(cls, output: PoolingOutput) -> ClassificationOutput:
        return cls(probs=output.data.tolist())

    @property
    def num_classes(self) -> int:
        return len(self.probs)


@dataclass(slots=True)
class ScoringOutput:
    score: float

    @classmethod
    def from_base(cls, output: PoolingOutput) -> ScoringOutput:
        data = output.data
        if data.numel() != 1:
            raise ValueError(f"a score is one value, got a tensor of shape {tuple(data.shape)}")
        return cls(score=float(data.reshape(-1)[0]))


def _typed_view(kind: type, request_output: PoolingRequestOutput[PoolingOutput], out_cls: type):
    return out_cls(
        request_id=request_output.request_id,
        outputs=kind.from_base(request_output.outputs),
        prompt_token_ids=request_output.prompt_token_ids,
        finished=request_output.finished,
        num_cached_tokens=request_output.num_cached_tokens,
        metrics=request_output.metrics,
        prompt=request_output.prompt,
    )


@dataclass(slots=True)
class EmbeddingRequestOutput(PoolingRequestOutput[EmbeddingOutput]):
    @classmethod
    def from_base(cls, request_output: PoolingRequestOutput) -> EmbeddingRequestOutput:
        return _typed_view(EmbeddingOutput, request_output, cls)


@dataclass(slots=True)
class ClassificationRequestOutput(PoolingRequestOutput[ClassificationOutput]):
    @classmethod
    def from_base(cls, request_output: PoolingRequestOutput) -> ClassificationRequestOutput:
        return _typed_view(ClassificationOutput, request_output, cls)


@dataclass(slots=True)
class ScoringRequestOutput(PoolingRequestOutput[ScoringOutput]):
    @classmethod
    def from_base(cls, request_output: PoolingRequestOutput) -> ScoringRequestOutput:
        return _typed_view(ScoringOutput, request_output, cls)
