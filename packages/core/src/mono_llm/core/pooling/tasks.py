"""What a model is served for: generate, embed or classify, and which request tasks follow.

The "runner" is how the engine runs the model (`generate`: sample tokens with a KV cache;
`embed` / `classify`: one forward pass per prompt, then pool). Request tasks are what a
client may ask of it: an embedding model answers embed, encode and score (cosine
similarity); a classifier answers classify and encode, and score when it has one label
(a cross-encoder). The default comes from the architecture and the folder's files, and
`EngineArgs.task` overrides it within what the model can do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mono_llm.core.errors import UnsupportedModelError, UnsupportedTaskError
from mono_llm.core.models.registry import find_spec
from mono_llm.core.pooling.config import (
    PoolerConfig,
    has_sentence_transformers_config,
    load_pooler_config,
)

RUNNERS = ("generate", "embed", "classify")


@dataclass(slots=True)
class ModelTasks:
    """How one model is served and what its requests may ask for."""

    runner: str  # generate | embed | classify
    supported_tasks: list[str]  # request tasks: generate | embed | encode | classify | score
    is_encoder: bool = False  # bidirectional attention, no KV cache
    pooler_config: PoolerConfig | None = None
    num_labels: int = 0
    id2label: dict[int, str] = field(default_factory=dict)
    # Classifier output activation: "softmax" | "sigmoid" | "identity".
    classifier_activation: str = "softmax"

    def supports(self, task: str) -> bool:
        return task in self.supported_tasks

    def check(self, task: str, *, model: str | None = None) -> None:
        """Raise UnsupportedTaskError (naming what is supported) unless `task` is served."""
        if task not in self.supported_tasks:
            raise UnsupportedTaskError(task, list(self.supported_tasks), model=model)


def is_encoder_architecture(architectures: list[str]) -> bool:
    spec = find_spec(architectures)
    return spec is not None and spec.is_encoder_only


def capable_runners(architectures: list[str]) -> list[str]:
    """Runners a model of these architectures can be served with, its default first (read
    from the model registry; an unknown architecture is treated as a generative decoder)."""
    spec = find_spec(architectures)
    return list(spec.runners) if spec is not None else ["generate", "embed"]


def resolve_model_tasks(
    requested: str,
    architectures: list[str],
    model_dir: str | Path,
    hf_config: dict[str, Any],
    *,
    model_name: str | None = None,
) -> ModelTasks:
    """Pick the runner for `requested` (auto|generate|pooling|embed|classify|score) and
    describe it."""
    runners = capable_runners(architectures)
    default = runners[0]
    # A generative model that ships a sentence-transformers pipeline is an embedding model
    # published in causal-LM form (e.g. Qwen3-Embedding): serve it for embeddings by default.
    if default == "generate" and has_sentence_transformers_config(model_dir):
        default = "embed"
    num_labels = classifier_num_labels(hf_config) if "classify" in runners else 0
    if requested in ("auto", None, ""):
        runner = default
    elif requested == "pooling":  # --runner pooling: the model's pooling task, else embeddings
        pooling = [r for r in runners if r != "generate"]
        if default != "generate":
            runner = default
        elif pooling:
            runner = pooling[0]
        else:
            raise UnsupportedTaskError(
                "pooling", _request_tasks_of_runners(runners, num_labels), model=model_name
            )
    elif requested == "score":
        # Scoring uses a cross-encoder (one label) or cosine similarity of embeddings.
        if "classify" in runners and num_labels == 1:
            runner = "classify"
        elif "embed" in runners:
            runner = "embed"
        else:
            raise UnsupportedTaskError(
                "score", _request_tasks_of_runners(runners, num_labels), model=model_name
            )
    elif requested in runners:
        runner = requested
    else:
        raise UnsupportedTaskError(
            requested, _request_tasks_of_runners(runners, num_labels), model=model_name
        )

    encoder = is_encoder_architecture(architectures)
    tasks = ModelTasks(
        runner=runner, supported_tasks=_request_tasks(runner, num_labels), is_encoder=encoder
    )
    if runner == "embed":
        tasks.pooler_config = load_pooler_config(
            model_dir, hf_config, default_pooling="cls" if encoder else "last"
        )
    elif runner == "classify":
        tasks.num_labels = num_labels
        tasks.id2label = _id2label(hf_config, num_labels)
        tasks.classifier_activation = classifier_activation(hf_config, num_labels)
        # Decoder classifiers read the last token; BERT-style ones their pooler on [CLS].
        tasks.pooler_config = PoolerConfig(
            pooling_type="cls" if encoder else "last", normalize=False
        )
    return tasks


def _request_tasks(runner: str, num_labels: int) -> list[str]:
    if runner == "generate":
        return ["generate"]
    if runner == "embed":
        return ["embed", "encode", "score"]
    return ["classify", "encode", "score"] if num_labels == 1 else ["classify", "encode"]


def _request_tasks_of_runners(runners: list[str], num_labels: int) -> list[str]:
    tasks: list[str] = []
    for runner in runners:
        tasks += [t for t in _request_tasks(runner, num_labels) if t not in tasks]
    return tasks


def classifier_num_labels(hf_config: dict[str, Any]) -> int:
    """num_labels as HF reads it: explicit, else the size of id2label, else 2. The one reading
    shared by task detection (sigmoid vs softmax, score support) and the models' head sizes,
    so the two can never disagree."""
    tokens = classifier_tokens(hf_config)
    if tokens:
        return 1 if hf_config.get("is_original_qwen3_reranker") else len(tokens)
    if isinstance(hf_config.get("num_labels"), int):
        return int(hf_config["num_labels"])
    id2label = hf_config.get("id2label")
    return len(id2label) if isinstance(id2label, dict) and id2label else 2


def classifier_tokens(hf_config: dict[str, Any]) -> list[str]:
    """`classifier_from_token` (vLLM's hf_overrides key): a causal LM served as a classifier
    whose label logits are its LM head's logits of these tokens. With
    `is_original_qwen3_reranker` there are two, ["no", "yes"], and the one score is
    logit(yes) - logit(no), whose sigmoid is the model's probability of "yes"."""
    tokens = hf_config.get("classifier_from_token")
    if tokens is None:
        return []
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise UnsupportedModelError("classifier_from_token must be a list of token strings.")
    if hf_config.get("is_original_qwen3_reranker") and len(tokens) != 2:
        raise UnsupportedModelError(
            "is_original_qwen3_reranker needs classifier_from_token to name two tokens "
            f'(["no", "yes"]); got {tokens}.'
        )
    return tokens


def _id2label(hf_config: dict[str, Any], num_labels: int) -> dict[int, str]:
    raw = hf_config.get("id2label") or {}
    labels = {int(k): str(v) for k, v in raw.items()}
    return {i: labels.get(i, f"LABEL_{i}") for i in range(num_labels)}


def classifier_activation(hf_config: dict[str, Any], num_labels: int) -> str:
    """softmax over labels, or sigmoid for one label / multi-label problems.

    A sentence-transformers CrossEncoder records its activation in config.json under
    `sentence_transformers.activation_fn` (Sigmoid or Identity); that wins when present.
    """
    st = hf_config.get("sentence_transformers") or {}
    name = st.get("activation_fn") if isinstance(st, dict) else None
    if isinstance(name, str):
        short = name.rsplit(".", 1)[-1].lower()
        if short in ("sigmoid", "identity", "softmax"):
            return short
    if num_labels == 1 or hf_config.get("problem_type") == "multi_label_classification":
        return "sigmoid"
    return "softmax"
