"""How to pool one request: the knobs of vLLM's `PoolingParams`, with the same names.

A request carrying `PoolingParams` (instead of `SamplingParams`) runs its prompt once and
finishes after the prefill: the model's hidden states are pooled into one vector (an
embedding, class probabilities or a relevance score) and nothing is generated.
"""

from __future__ import annotations

from dataclasses import dataclass

from mono_llm.core.errors import InvalidRequestError

# embed: sentence embedding; classify: class probabilities; score: one relevance value per
# (query, document) pair; encode: the model's raw pooled output (POST /pooling).
POOLING_TASKS = ("embed", "classify", "score", "encode")


@dataclass(slots=True)
class PoolingParams:
    """Parameters of one pooling request (vLLM-compatible names).

    `None` means "the model's default": embedding models normalize (as their
    sentence-transformers config says), classifiers apply softmax/sigmoid.
    """

    task: str | None = None
    """embed | classify | score | encode; set by the entry point (LLM.embed, /v1/embeddings ...)."""
    dimensions: int | None = None
    """Matryoshka truncation of embeddings; only for models trained for it."""
    normalize: bool | None = None
    """L2-normalize embeddings (default: the model's own pooling config)."""
    use_activation: bool | None = None
    """Apply softmax / sigmoid to classifier logits (default: yes)."""
    activation: bool | None = None
    """Older vLLM name of use_activation; if set, it wins when use_activation is unset."""
    truncate_prompt_tokens: int | None = None
    """Keep only the last k prompt tokens (-1: truncate to the model's context length)."""
    token_type_split: int | None = None
    """Internal: for a (text_1, text_2) pair fed to a BERT cross-encoder, the index of the
    first token of text_2; tokens from here on get token_type_id 1. Set by score entry points."""

    def __post_init__(self) -> None:
        if self.task is not None and self.task not in POOLING_TASKS:
            raise InvalidRequestError(
                f"task must be one of {', '.join(POOLING_TASKS)}; got {self.task!r}.",
                param="task",
            )
        if self.dimensions is not None and self.dimensions < 1:
            raise InvalidRequestError(
                f"dimensions must be a positive integer, got {self.dimensions}.",
                param="dimensions",
            )
        if self.truncate_prompt_tokens is not None and (
            self.truncate_prompt_tokens < -1 or self.truncate_prompt_tokens == 0
        ):
            raise InvalidRequestError(
                "truncate_prompt_tokens must be -1 or a positive integer, "
                f"got {self.truncate_prompt_tokens}.",
                param="truncate_prompt_tokens",
            )
        if self.use_activation is None and self.activation is not None:
            self.use_activation = self.activation
        if self.token_type_split is not None and self.token_type_split < 0:
            raise InvalidRequestError("token_type_split must be >= 0.", param="token_type_split")

    def clone(self) -> PoolingParams:
        return PoolingParams(
            task=self.task,
            dimensions=self.dimensions,
            normalize=self.normalize,
            use_activation=self.use_activation,
            truncate_prompt_tokens=self.truncate_prompt_tokens,
            token_type_split=self.token_type_split,
        )

    def verify(
        self,
        task: str,
        *,
        hidden_size: int,
        matryoshka: bool,
        matryoshka_dimensions: list[int] | None = None,
    ) -> None:
        """Check the parameters fit `task` on this model; raise InvalidRequestError otherwise.

        `dimensions` is only meaningful for embeddings of a Matryoshka-trained model: other
        models' leading coordinates carry no special meaning, so truncating them silently
        would return a worse vector than the client thinks (vLLM and OpenAI answer 400 too).
        """
        if self.dimensions is not None:
            if task not in ("embed", "encode"):
                raise InvalidRequestError(
                    f"dimensions is only valid for embeddings, not for the {task!r} task.",
                    param="dimensions",
                )
            if not matryoshka:
                raise InvalidRequestError(
                    "Model does not support matryoshka representation, changing output "
                    "dimensions will lead to poor results.",
                    param="dimensions",
                )
            if self.dimensions > hidden_size:
                raise InvalidRequestError(
                    f"dimensions must be at most the embedding size {hidden_size}, "
                    f"got {self.dimensions}.",
                    param="dimensions",
                )
            if matryoshka_dimensions and self.dimensions not in matryoshka_dimensions:
                raise InvalidRequestError(
                    f"dimensions {self.dimensions} is not supported by this model; it was "
                    f"trained for {', '.join(map(str, sorted(matryoshka_dimensions)))}.",
                    param="dimensions",
                )
