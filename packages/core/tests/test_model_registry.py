"""The model registry: one ModelSpec per architecture, read by the loader and task detection."""

from __future__ import annotations

import pytest

from mono_llm.core.errors import UnsupportedModelError
from mono_llm.core.models import registry
from mono_llm.core.models.interface import EngineModel
from mono_llm.core.models.registry import ModelKind, ModelSpec, find_spec, resolve_spec
from mono_llm.core.pooling.tasks import capable_runners, is_encoder_architecture


def test_every_spec_names_an_importable_class_with_the_interface() -> None:
    methods = [
        name
        for name in dir(EngineModel)
        if not name.startswith("_") and callable(getattr(EngineModel, name, None))
    ]
    assert {"embed_input_ids", "forward", "compute_logits", "load_weights"} <= set(methods)
    for arch in registry.supported_architectures():
        spec = resolve_spec([arch])
        cls = spec.load_class()
        missing = [m for m in methods if not hasattr(cls, m)]
        assert not missing, f"{arch}: {cls.__name__} lacks {missing}"
        assert spec.runners and set(spec.runners) <= {"generate", "embed", "classify"}


def test_task_detection_reads_the_registry() -> None:
    assert capable_runners(["LlamaForCausalLM"]) == ["generate", "embed"]
    assert capable_runners(["Qwen2ForSequenceClassification"]) == ["classify"]
    assert capable_runners(["MistralModel"]) == ["embed"]
    assert capable_runners(["XLMRobertaModel"]) == ["embed"]
    assert is_encoder_architecture(["BertForSequenceClassification"])
    assert not is_encoder_architecture(["Qwen3ForCausalLM"])
    assert resolve_spec(["BertModel"]).kind is ModelKind.ENCODER_ONLY
    # The first supported entry of config.json wins.
    assert resolve_spec(["NotAModel", "Qwen3Model"]).architecture == "Qwen3Model"


def test_unknown_architecture_names_the_supported_ones() -> None:
    assert find_spec(["MambaForCausalLM"]) is None
    with pytest.raises(UnsupportedModelError, match="LlamaForCausalLM"):
        resolve_spec(["MambaForCausalLM"])


def test_weight_naming_of_the_llama_family() -> None:
    naming = resolve_spec(["LlamaForCausalLM"]).weights
    assert naming.map("model.layers.0.self_attn.q_proj.weight") == (
        "model.layers.0.self_attn.q_proj.weight"
    )
    assert naming.map("layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.up_proj.weight"
    assert naming.map("lm_head.weight") == "lm_head.weight"
    assert naming.map("model.layers.0.self_attn.rotary_emb.inv_freq") is None
    classifier = resolve_spec(["Qwen2ForSequenceClassification"]).weights
    # The classifier sees an LM head (classifier_from_token builds its score rows from it).
    assert classifier.map("lm_head.weight") == "lm_head.weight"
    assert classifier.map("score.weight") == "score.weight"
    assert classifier.map("embed_tokens.weight") == "model.embed_tokens.weight"
    assert resolve_spec(["Qwen2Model"]).weights.map("lm_head.weight") is None
    assert resolve_spec(["Qwen2Model"]).settings_architecture == "Qwen2ForCausalLM"


def test_weight_naming_of_bert() -> None:
    naming = resolve_spec(["RobertaForSequenceClassification"]).weights
    assert naming.map("roberta.encoder.layer.0.output.dense.weight") == (
        "encoder.layer.0.output.dense.weight"
    )
    assert naming.map("bert.embeddings.LayerNorm.gamma") == "embeddings.LayerNorm.weight"
    assert naming.map("embeddings.position_ids") is None
    assert naming.map("cls.predictions.bias") is None
    assert naming.map("classifier.out_proj.weight") == "classifier.out_proj.weight"


def test_register_model_adds_an_architecture_everywhere() -> None:
    spec = ModelSpec("FooForCausalLM", "llama", "LlamaForCausalLM", ("generate",))
    registry.register_model(spec)
    try:
        assert "FooForCausalLM" in registry.supported_architectures()
        assert capable_runners(["FooForCausalLM"]) == ["generate"]
        cls, arch = registry.resolve_model_class(["FooForCausalLM"])
        assert cls.__name__ == "LlamaForCausalLM" and arch == "FooForCausalLM"
    finally:
        registry._SPECS.pop("FooForCausalLM")
