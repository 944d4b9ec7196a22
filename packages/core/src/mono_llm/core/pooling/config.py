"""How a model turns token hidden states into one vector, as its files describe it.

sentence-transformers models describe their pipeline in `modules.json`: a Transformer,
then a Pooling module (`1_Pooling/config.json`: mean / CLS / last token / max), optional
Dense projections and a Normalize module. We read that description instead of guessing,
because the same BertModel checkpoint gives different (and wrong) embeddings under the
wrong pooling. Without these files we use vLLM's defaults: CLS for BERT-style encoders,
last token for decoders, normalized.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mono_llm.core.errors import UnsupportedModelError

POOLING_TYPES = ("mean", "cls", "last", "max", "mean_sqrt_len")

# 1_Pooling/config.json flag -> our pooling type, in the order sentence-transformers checks them.
_ST_POOLING_FLAGS = (
    ("pooling_mode_cls_token", "cls"),
    ("pooling_mode_lasttoken", "last"),
    ("pooling_mode_mean_tokens", "mean"),
    ("pooling_mode_max_tokens", "max"),
    ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len"),
)
_ST_MODULE_PREFIX = "sentence_transformers.models."
_SUPPORTED_ST_MODULES = {"Transformer", "Pooling", "Normalize", "Dense"}


@dataclass(slots=True)
class DenseLayerConfig:
    """A sentence-transformers Dense module: a linear projection after pooling."""

    path: Path
    in_features: int
    out_features: int
    bias: bool
    activation: str  # "identity" | "tanh" | "gelu" | "relu"


@dataclass(slots=True)
class PoolerConfig:
    """The pooling pipeline of one model."""

    pooling_type: str = "cls"
    normalize: bool = True
    # Tokens the sentence-transformers pipeline keeps (its max_seq_length); None: model's own.
    max_seq_length: int | None = None
    do_lower_case: bool = False
    dense_layers: list[DenseLayerConfig] = field(default_factory=list)
    is_matryoshka: bool = False
    matryoshka_dimensions: list[int] | None = None
    # True when read from sentence-transformers files, False for inferred defaults.
    from_sentence_transformers: bool = False

    def __post_init__(self) -> None:
        if self.pooling_type not in POOLING_TYPES:
            raise UnsupportedModelError(
                f"pooling type {self.pooling_type!r} is not supported; "
                f"known: {', '.join(POOLING_TYPES)}."
            )


def has_sentence_transformers_config(model_dir: str | Path) -> bool:
    return (Path(model_dir) / "modules.json").is_file()


def load_pooler_config(
    model_dir: str | Path, hf_config: dict[str, Any], *, default_pooling: str
) -> PoolerConfig:
    """Read the pooling pipeline from `model_dir`; fall back to `default_pooling`, normalized."""
    model_dir = Path(model_dir)
    matryoshka_dims = hf_config.get("matryoshka_dimensions")
    is_matryoshka = bool(hf_config.get("is_matryoshka") or matryoshka_dims)
    config = PoolerConfig(
        pooling_type=default_pooling,
        normalize=True,
        is_matryoshka=is_matryoshka,
        matryoshka_dimensions=list(matryoshka_dims) if matryoshka_dims else None,
    )
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        return config
    modules = json.loads(modules_file.read_text())
    config.from_sentence_transformers = True
    config.normalize = False  # only a Normalize module normalizes
    for module in sorted(modules, key=lambda m: m.get("idx", 0)):
        kind = str(module.get("type", "")).removeprefix(_ST_MODULE_PREFIX)
        if kind not in _SUPPORTED_ST_MODULES:
            raise UnsupportedModelError(
                f"sentence-transformers module {module.get('type')!r} in {modules_file} is not "
                f"supported; supported modules: {', '.join(sorted(_SUPPORTED_ST_MODULES))}."
            )
        module_dir = model_dir / module.get("path", "")
        if kind == "Pooling":
            config.pooling_type = _read_st_pooling(module_dir / "config.json", default_pooling)
        elif kind == "Normalize":
            config.normalize = True
        elif kind == "Dense":
            config.dense_layers.append(_read_st_dense(module_dir))
    st_config = model_dir / "sentence_bert_config.json"
    if st_config.is_file():
        values = json.loads(st_config.read_text())
        if isinstance(values.get("max_seq_length"), int):
            config.max_seq_length = values["max_seq_length"]
        config.do_lower_case = bool(values.get("do_lower_case", False))
    return config


def _read_st_pooling(path: Path, default_pooling: str) -> str:
    if not path.is_file():
        return default_pooling
    values = json.loads(path.read_text())
    # Newer sentence-transformers also write the mode as one string.
    mode = values.get("pooling_mode")
    if isinstance(mode, str):
        by_name = {"cls": "cls", "lasttoken": "last", "mean": "mean", "max": "max"}
        by_name["mean_sqrt_len_tokens"] = "mean_sqrt_len"
        if mode in by_name:
            return by_name[mode]
    enabled = [ours for flag, ours in _ST_POOLING_FLAGS if values.get(flag)]
    if len(enabled) > 1:
        # sentence-transformers concatenates several poolings; no model we serve does that.
        raise UnsupportedModelError(
            f"{path} enables several pooling modes ({', '.join(enabled)}); only one is supported."
        )
    if values.get("pooling_mode_weightedmean_tokens"):
        raise UnsupportedModelError(f"{path}: weighted-mean pooling is not supported.")
    return enabled[0] if enabled else default_pooling


def _read_st_dense(module_dir: Path) -> DenseLayerConfig:
    values = json.loads((module_dir / "config.json").read_text())
    activation = str(values.get("activation_function", "torch.nn.modules.linear.Identity"))
    short = activation.rsplit(".", 1)[-1].lower()
    if short not in ("identity", "tanh", "gelu", "relu"):
        raise UnsupportedModelError(
            f"Dense activation {activation!r} in {module_dir} is not supported."
        )
    return DenseLayerConfig(
        path=module_dir,
        in_features=int(values["in_features"]),
        out_features=int(values["out_features"]),
        bias=bool(values.get("bias", True)),
        activation=short,
    )
