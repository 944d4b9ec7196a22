"""The one table of supported architectures: a `ModelSpec` per HF architecture name.

Everything that depends on the architecture reads it from here: the loader (which class,
which part of config.json, how checkpoint names map onto parameters), task detection in
pooling/tasks.py (what a model can be served for, whether it is an encoder) and the request
side (which input modalities a model accepts). Adding an architecture is one module under
`mono_llm.core.models` plus one `ModelSpec` entry in `_SPECS` below (docs/adding-a-model.md).

Entries name a module and class rather than importing them, so importing the registry (done
at start-up to validate config.json) stays cheap.
"""

from __future__ import annotations

import enum
import importlib
from dataclasses import dataclass, field
from typing import Literal

from mono_llm.core.errors import UnsupportedModelError

Runner = Literal["generate", "embed", "classify"]


class ModelKind(enum.Enum):
    """How attention runs, which decides the runner and the KV cache a model gets."""

    DECODER_ONLY = "decoder-only"  # causal self-attention over the paged KV cache
    ENCODER_ONLY = "encoder-only"  # bidirectional, whole prompts in one pass, no KV cache
    ENCODER_DECODER = "encoder-decoder"  # encoder once per request, decoder with cross-attention


@dataclass(frozen=True, slots=True)
class WeightNaming:
    """How a checkpoint's tensor names become the model's parameter names.

    Applied by the loader to every (name, tensor) before `model.load_weights` sees it, so a
    model's `load_weights` deals only with names of its own module tree (and with fusing,
    e.g. q/k/v into qkv_proj). Rules run in order: skip, strip, add, rename.
    """

    # Tensors the model has no use for (masked-LM heads, rope tables, HF buffers).
    skip_prefixes: tuple[str, ...] = ()
    skip_substrings: tuple[str, ...] = ()
    skip_suffixes: tuple[str, ...] = ()
    # Wrappers some exports put around the body (`bert.`, `roberta.`); the first match goes.
    strip_prefixes: tuple[str, ...] = ()
    # Prepended to names that start with none of `top_level` (bare `layers.0...` exports).
    add_prefix: str = ""
    top_level: tuple[str, ...] = ()
    # (old, new) substring renames, e.g. TF-era `LayerNorm.gamma` -> `LayerNorm.weight`.
    renames: tuple[tuple[str, str], ...] = ()

    def map(self, name: str) -> str | None:
        """The model-side name of checkpoint tensor `name`, or None to skip it."""
        if name.startswith(self.skip_prefixes) or name.endswith(self.skip_suffixes):
            return None
        if any(s in name for s in self.skip_substrings):
            return None
        for prefix in self.strip_prefixes:
            if name.startswith(prefix):
                name = name[len(prefix) :]
                break
        if self.add_prefix and not name.startswith((self.add_prefix, *self.top_level)):
            name = self.add_prefix + name
        for old, new in self.renames:
            name = name.replace(old, new)
        if name.startswith(self.skip_prefixes):  # e.g. `model.lm_head` after stripping
            return None
        return name


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Everything the engine needs to know about one HF architecture name."""

    architecture: str  # as in config.json `architectures`
    module: str  # module under mono_llm.core.models
    class_name: str
    # Runners it can be served with, the default first ("generate": sample with a KV cache;
    # "embed" / "classify": one forward pass per prompt, then pool).
    runners: tuple[Runner, ...]
    kind: ModelKind = ModelKind.DECODER_ONLY
    # Input modalities a request may carry for it ("text", "image", "audio").
    modalities: frozenset[str] = frozenset({"text"})
    weights: WeightNaming = field(default_factory=WeightNaming)
    # Which part of config.json the class is built from: "text" = `text_config` when nested
    # (a language model inside a multimodal folder), "full" = the whole config.
    config_view: Literal["text", "full"] = "text"
    # The family member whose switches apply, when it differs from `architecture`
    # (Qwen2ForSequenceClassification is built with Qwen2ForCausalLM's settings).
    family_architecture: str | None = None
    # Its class takes a `tp` (TensorParallelGroup) and splits its layers over the ranks.
    tensor_parallel: bool = False
    # Its class applies the config's sliding attention window(s) itself; for the others the
    # engine caps the context at the window, where full attention gives the same results.
    sliding_window: bool = False

    @property
    def is_encoder_only(self) -> bool:
        return self.kind is ModelKind.ENCODER_ONLY

    @property
    def settings_architecture(self) -> str:
        return self.family_architecture or self.architecture

    def load_class(self) -> type:
        """The implementing class (imports its module on first use)."""
        module = importlib.import_module(f"mono_llm.core.models.{self.module}")
        return getattr(module, self.class_name)


# ---------------------------------------------------------------------------- the table

_LLAMA_WEIGHTS = WeightNaming(
    # Old checkpoints saved the rope tables beside the weights; they are recomputed at load.
    skip_substrings=("rotary_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached"),
    # Some exports store the decoder body bare (`layers.0...`, `embed_tokens...`).
    add_prefix="model.",
    top_level=("lm_head.", "score."),
)
# Pooling heads over the Llama body: an LM head in the checkpoint is not used.
_LLAMA_POOLING_WEIGHTS = WeightNaming(
    skip_prefixes=("lm_head.",),
    skip_substrings=_LLAMA_WEIGHTS.skip_substrings,
    add_prefix="model.",
    top_level=("score.",),
)
# Classifiers also see the LM head: a causal-LM checkpoint served as a classifier through
# `classifier_from_token` (Qwen3-Reranker) builds its score head from rows of it.
_LLAMA_CLASSIFIER_WEIGHTS = WeightNaming(
    skip_substrings=_LLAMA_WEIGHTS.skip_substrings,
    add_prefix="model.",
    top_level=("lm_head.", "score."),
)
_BERT_WEIGHTS = WeightNaming(
    # Masked-LM heads and HF's position_ids / token_type_ids buffers are not parameters here.
    skip_prefixes=("cls.", "lm_head."),
    skip_suffixes=("position_ids", "token_type_ids"),
    strip_prefixes=("bert.", "roberta.", "model."),
    renames=(("LayerNorm.gamma", "LayerNorm.weight"), ("LayerNorm.beta", "LayerNorm.bias")),
)


def _llama_family() -> list[ModelSpec]:
    specs: list[ModelSpec] = []
    # Phi3: Phi-3 / Phi-3.5-mini / Phi-4-mini (model_type "phi3"), whose checkpoints store
    # qkv_proj and gate_up_proj already fused; models/llama.py splits them at load.
    # Granite: IBM Granite 3.x dense (transformers has no Granite sequence classifier).
    # Olmo2: its q/k norms span every head, so one rank's heads cannot be normalised alone:
    # no tensor parallelism.
    # (causal LM, sequence classifier, bare body): HF names them after the family, except
    # text-only Gemma 3 (model_type gemma3_text), whose Gemma3ForSequenceClassification and
    # Gemma3Model names belong to the multimodal model.
    families = ("Llama", "Mistral", "Qwen2", "Qwen3", "Phi3", "Gemma", "Gemma2", "Granite", "Olmo2")
    names = [
        (f"{family}ForCausalLM", f"{family}ForSequenceClassification", f"{family}Model")
        for family in families
    ]
    names.append(("Gemma3ForCausalLM", "Gemma3TextForSequenceClassification", "Gemma3TextModel"))
    for causal, classifier, bare in names:
        windows = causal in ("Gemma2ForCausalLM", "Gemma3ForCausalLM")
        specs += [
            # Any generative decoder can also serve last-token embeddings (vLLM's --task embed).
            ModelSpec(
                causal,
                "llama",
                "LlamaForCausalLM",
                ("generate", "embed"),
                weights=_LLAMA_WEIGHTS,
                tensor_parallel=causal != "Olmo2ForCausalLM",
                sliding_window=windows,
            ),
            # Reward models, Qwen rerankers: the decoder with a `score` head on the last token.
            ModelSpec(
                classifier,
                "llama_pooling",
                "LlamaForSequenceClassification",
                ("classify",),
                weights=_LLAMA_CLASSIFIER_WEIGHTS,
                family_architecture=causal,
                sliding_window=windows,
            ),
            # Bare decoder bodies (no LM head) are published for embeddings (e5-mistral).
            ModelSpec(
                bare,
                "llama_pooling",
                "LlamaBareModel",
                ("embed",),
                weights=_LLAMA_POOLING_WEIGHTS,
                family_architecture=causal,
                sliding_window=windows,
            ),
        ]
    return [spec for spec in specs if spec.architecture != "GraniteForSequenceClassification"]


def _bert_family() -> list[ModelSpec]:
    specs: list[ModelSpec] = []
    for family in ("Bert", "Roberta", "XLMRoberta"):
        specs += [
            ModelSpec(
                f"{family}Model",
                "bert",
                "BertModel",
                ("embed",),
                kind=ModelKind.ENCODER_ONLY,
                weights=_BERT_WEIGHTS,
            ),
            ModelSpec(
                f"{family}ForSequenceClassification",
                "bert",
                "BertForSequenceClassification",
                ("classify",),
                kind=ModelKind.ENCODER_ONLY,
                weights=_BERT_WEIGHTS,
            ),
        ]
    return specs


def _vision_language_models() -> list[ModelSpec]:
    """A vision tower feeding a decoder; built from the whole config.json (vision_config and
    text_config), each class maps its own checkpoint names (two HF namings exist)."""
    image = frozenset({"text", "image"})
    return [
        ModelSpec(
            "LlavaForConditionalGeneration",
            "llava",
            "LlavaForConditionalGeneration",
            ("generate",),
            modalities=image,
            config_view="full",
        ),
        *(
            ModelSpec(
                arch,
                "qwen2_vl",
                "Qwen2VLForConditionalGeneration",
                ("generate",),
                modalities=image,
                config_view="full",
            )
            for arch in ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration")
        ),
    ]


def _opt_models() -> list[ModelSpec]:
    return [
        # OPT 125m ... 66b: learned positions, pre- or post-LayerNorm (350m), optional
        # project_in/out around a narrower embedding; the lm_head is tied to the embedding.
        ModelSpec(
            "OPTForCausalLM",
            "opt",
            "OPTForCausalLM",
            ("generate",),
            weights=WeightNaming(
                # opt-125m's pytorch_model.bin stores the body bare (`decoder.layers...`).
                add_prefix="model.",
                top_level=("lm_head.",),
            ),
            tensor_parallel=True,
        ),
        # GPT-2 (gpt2 ... gpt2-xl, distilgpt2): OPT's pre-LN block, so OPT's module tree; the
        # names map onto it here, and models/gpt2.py transposes its Conv1D weights.
        ModelSpec(
            "GPT2LMHeadModel",
            "gpt2",
            "GPT2LMHeadModel",
            ("generate",),
            weights=WeightNaming(
                # The causal-mask buffers old checkpoints store with the weights.
                skip_suffixes=(".attn.bias", ".attn.masked_bias"),
                strip_prefixes=("transformer.",),  # old exports store the body bare
                add_prefix="model.decoder.",
                top_level=("lm_head.",),
                renames=_GPT2_RENAMES,
            ),
        ),
        # GPT-NeoX (Pythia, GPT-NeoX-20B): partial rotary, parallel residual, untied embed_out.
        ModelSpec(
            "GPTNeoXForCausalLM",
            "gpt_neox",
            "GPTNeoXForCausalLM",
            ("generate",),
            weights=WeightNaming(
                # Buffers old checkpoints store with the weights: masks and the rope table.
                skip_suffixes=(".attention.bias", ".attention.masked_bias", ".rotary_emb.inv_freq"),
                renames=(("lm_head.", "embed_out."),),  # transformers 5 saves the head so
            ),
        ),
    ]


# GPT-2 checkpoint names -> OPT parameter names (after `model.decoder.` is prepended).
_GPT2_RENAMES = (
    ("model.decoder.wte.", "model.decoder.embed_tokens."),
    ("model.decoder.wpe.", "model.decoder.embed_positions."),
    ("model.decoder.ln_f.", "model.decoder.final_layer_norm."),
    ("model.decoder.h.", "model.decoder.layers."),
    (".ln_1.", ".self_attn_layer_norm."),
    (".attn.c_attn.", ".self_attn.c_attn."),  # fused q/k/v, split by models/gpt2.py
    (".attn.c_proj.", ".self_attn.out_proj."),
    (".ln_2.", ".final_layer_norm."),
    (".mlp.c_fc.", ".fc1."),
    (".mlp.c_proj.", ".fc2."),
)


def _speech_models() -> list[ModelSpec]:
    return [
        # Whisper, tiny ... large-v3-turbo: the encoder once per request on log-mel features,
        # the decoder with cross-attention on the paged cache; proj_out is tied to the embedding.
        ModelSpec(
            "WhisperForConditionalGeneration",
            "whisper",
            "WhisperForConditionalGeneration",
            ("generate",),
            kind=ModelKind.ENCODER_DECODER,
            modalities=frozenset({"text", "audio"}),
            weights=WeightNaming(
                skip_prefixes=("proj_out.",), add_prefix="model.", top_level=("proj_out.",)
            ),
            config_view="full",
        ),
    ]


_SPECS: dict[str, ModelSpec] = {
    spec.architecture: spec
    for spec in _llama_family()
    + _opt_models()
    + _bert_family()
    + _vision_language_models()
    + _speech_models()
}


# ---------------------------------------------------------------------------- lookups


def register_model(spec: ModelSpec) -> None:
    """Add (or replace) an architecture at run time, e.g. a model class outside this package
    whose module is importable as `mono_llm.core.models.<spec.module>`."""
    _SPECS[spec.architecture] = spec


def supported_architectures() -> list[str]:
    return sorted(_SPECS)


def tensor_parallel_architectures() -> list[str]:
    """Architectures whose classes split over a tensor-parallel group."""
    return sorted(name for name, spec in _SPECS.items() if spec.tensor_parallel)


def find_spec(architectures: list[str]) -> ModelSpec | None:
    """The spec of the first supported entry of config.json `architectures`, if any."""
    for arch in architectures:
        spec = _SPECS.get(arch)
        if spec is not None:
            return spec
    return None


def resolve_spec(architectures: list[str]) -> ModelSpec:
    """Like `find_spec`, but an unsupported model raises, naming every supported one."""
    spec = find_spec(architectures)
    if spec is None:
        named = ", ".join(architectures) if architectures else "(none in config.json)"
        raise UnsupportedModelError(
            f"Model architecture {named} is not supported. Supported architectures: "
            f"{', '.join(supported_architectures())}."
        )
    return spec


def supports_transcription(architectures: list[str]) -> bool:
    """Whether a model of these architectures turns speech into text (the audio endpoints):
    an encoder–decoder whose requests carry audio."""
    spec = find_spec(architectures)
    return (
        spec is not None and spec.kind is ModelKind.ENCODER_DECODER and "audio" in spec.modalities
    )


def resolve_model_class(architectures: list[str]) -> tuple[type, str]:
    """(implementing class, the architecture it was chosen for): the first supported entry."""
    spec = resolve_spec(architectures)
    return spec.load_class(), spec.architecture
