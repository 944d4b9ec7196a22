"""Task detection, sentence-transformers config reading, pooling and PoolingParams checks."""

from __future__ import annotations

import json

import pytest
import torch

from mono_llm.core.config import EngineArgs
from mono_llm.core.errors import InvalidRequestError, UnsupportedModelError, UnsupportedTaskError
from mono_llm.core.pooling.config import load_pooler_config
from mono_llm.core.pooling.pooler import check_pooling_params, finalize_pooled, pool_sequences
from mono_llm.core.pooling.scoring import pair_inputs, unique_sides
from mono_llm.core.pooling.tasks import resolve_model_tasks
from mono_llm.core.pooling_params import PoolingParams
from mono_llm.core.testing import fixture_path, minilm_path


def _tasks(path, requested="auto"):
    config = json.loads((path / "config.json").read_text())
    return resolve_model_tasks(requested, config["architectures"], path, config, model_name="m")


def test_minilm_is_a_mean_pooled_normalized_embedder():
    tasks = _tasks(minilm_path())
    assert tasks.runner == "embed" and tasks.is_encoder
    assert tasks.supported_tasks == ["embed", "encode", "score"]
    config = tasks.pooler_config
    assert config.pooling_type == "mean" and config.normalize
    assert config.max_seq_length == 256 and config.from_sentence_transformers
    assert not config.is_matryoshka


def test_classifier_and_cross_encoder_tasks():
    classifier = _tasks(fixture_path("tiny-bert-classifier"))
    assert classifier.runner == "classify"
    assert classifier.supported_tasks == ["classify", "encode"]
    assert classifier.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert classifier.classifier_activation == "softmax"
    cross = _tasks(fixture_path("tiny-bert-cross-encoder"))
    assert cross.supported_tasks == ["classify", "encode", "score"]
    assert cross.classifier_activation == "sigmoid"
    assert _tasks(fixture_path("tiny-bert-cross-encoder"), "score").runner == "classify"


def test_generative_model_and_overrides():
    path = fixture_path("tiny-llama")
    tasks = _tasks(path)
    assert tasks.runner == "generate" and tasks.supported_tasks == ["generate"]
    with pytest.raises(UnsupportedTaskError, match=r"'embed' task; it supports: generate"):
        tasks.check("embed", model="tiny-llama")
    # --task embed turns a decoder into a last-token, normalized embedder (as vLLM).
    embed = _tasks(path, "embed")
    assert embed.runner == "embed" and not embed.is_encoder
    assert embed.pooler_config.pooling_type == "last" and embed.pooler_config.normalize
    with pytest.raises(UnsupportedTaskError, match="supports: generate, embed, encode, score"):
        _tasks(path, "classify")
    with pytest.raises(UnsupportedTaskError, match="supports: embed, encode, score"):
        _tasks(minilm_path(), "generate")


def test_runner_pooling_picks_the_models_own_pooling_task():
    """vLLM's --runner pooling: a causal LM becomes a last-token embedder, a classifier or an
    embedder stays what it is."""
    assert _tasks(fixture_path("tiny-llama"), "pooling").runner == "embed"
    assert _tasks(fixture_path("tiny-bert-classifier"), "pooling").runner == "classify"
    assert _tasks(minilm_path(), "pooling").runner == "embed"


@pytest.mark.parametrize(
    ("task", "runner", "convert", "expected"),
    [
        ("auto", "auto", "auto", "auto"),
        ("embed", "auto", "auto", "embed"),
        ("auto", "pooling", "auto", "pooling"),
        ("auto", "pooling", "none", "pooling"),
        ("score", "pooling", "auto", "score"),
        ("auto", "auto", "embed", "embed"),
        ("auto", "pooling", "classify", "classify"),
        ("auto", "generate", "auto", "generate"),
        ("generate", "generate", "none", "generate"),
    ],
)
def test_runner_and_convert_become_one_task(task, runner, convert, expected):
    args = EngineArgs(model="m", task=task, runner=runner, convert=convert)
    assert args.task == expected


@pytest.mark.parametrize(
    ("task", "runner", "convert", "param"),
    [
        ("auto", "generate", "embed", "convert"),
        ("generate", "pooling", "auto", "task"),
        ("embed", "auto", "classify", "task"),
        ("auto", "draft", "auto", "runner"),
        ("auto", "auto", "reward", "convert"),
    ],
)
def test_contradicting_runner_convert_and_task_are_refused(task, runner, convert, param):
    with pytest.raises(InvalidRequestError) as info:
        EngineArgs(model="m", task=task, runner=runner, convert=convert)
    assert info.value.param == param


def test_unsupported_request_task_names_the_supported_ones():
    tasks = _tasks(minilm_path())
    with pytest.raises(UnsupportedTaskError) as info:
        check_pooling_params(PoolingParams(task="classify"), tasks, hidden_size=384)
    assert info.value.supported == ["embed", "encode", "score"]
    assert info.value.param == "model"


def test_sentence_transformers_files_are_read(tmp_path):
    (tmp_path / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ]
        )
    )
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    )
    config = load_pooler_config(
        tmp_path, {"matryoshka_dimensions": [32, 64]}, default_pooling="last"
    )
    assert config.pooling_type == "cls"
    assert not config.normalize  # no Normalize module
    assert config.is_matryoshka and config.matryoshka_dimensions == [32, 64]
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "lasttoken"}))
    assert load_pooler_config(tmp_path, {}, default_pooling="cls").pooling_type == "last"
    (tmp_path / "modules.json").write_text(
        json.dumps([{"idx": 0, "path": "", "type": "sentence_transformers.models.WordEmbeddings"}])
    )
    with pytest.raises(UnsupportedModelError, match="WordEmbeddings"):
        load_pooler_config(tmp_path, {}, default_pooling="cls")
    # No modules.json at all: the caller's default pooling, normalized.
    default = load_pooler_config(tmp_path / "1_Pooling", {}, default_pooling="cls")
    assert default.pooling_type == "cls" and default.normalize


def test_pool_sequences_over_a_ragged_batch():
    hidden = torch.arange(12, dtype=torch.float32).view(6, 2)  # seqs of 1, 2 and 3 tokens
    lens = [1, 2, 3]
    assert pool_sequences(hidden, lens, "cls").tolist() == [[0, 1], [2, 3], [6, 7]]
    assert pool_sequences(hidden, lens, "last").tolist() == [[0, 1], [4, 5], [10, 11]]
    assert pool_sequences(hidden, lens, "mean").tolist() == [[0, 1], [3, 4], [8, 9]]
    assert pool_sequences(hidden, lens, "max").tolist() == [[0, 1], [4, 5], [10, 11]]
    sqrt = pool_sequences(hidden, lens, "mean_sqrt_len")
    torch.testing.assert_close(sqrt[2], torch.tensor([24.0, 27.0]) / 3**0.5)


def test_dimensions_need_a_matryoshka_model():
    tasks = _tasks(minilm_path())
    with pytest.raises(InvalidRequestError, match="matryoshka") as info:
        check_pooling_params(PoolingParams(task="embed", dimensions=64), tasks, hidden_size=384)
    assert info.value.param == "dimensions"
    tasks.pooler_config.is_matryoshka = True
    check_pooling_params(PoolingParams(task="embed", dimensions=64), tasks, hidden_size=384)
    with pytest.raises(InvalidRequestError, match="at most"):
        check_pooling_params(PoolingParams(task="embed", dimensions=500), tasks, hidden_size=384)
    row = torch.tensor([3.0, 4.0, 12.0])
    out = finalize_pooled(row, PoolingParams(task="embed", dimensions=2), tasks)
    torch.testing.assert_close(out, torch.tensor([0.6, 0.8]))  # truncated, then normalized


def test_finalize_defaults_per_task():
    embed = _tasks(minilm_path())
    row = torch.tensor([3.0, 4.0])
    torch.testing.assert_close(finalize_pooled(row, PoolingParams(task="embed"), embed), row / 5)
    torch.testing.assert_close(finalize_pooled(row, PoolingParams(task="encode"), embed), row)
    torch.testing.assert_close(
        finalize_pooled(row, PoolingParams(task="embed", normalize=False), embed), row
    )
    classifier = _tasks(fixture_path("tiny-bert-classifier"))
    logits = torch.tensor([1.0, 2.0, 0.5])
    torch.testing.assert_close(
        finalize_pooled(logits, PoolingParams(task="classify"), classifier), logits.softmax(-1)
    )
    torch.testing.assert_close(
        finalize_pooled(logits, PoolingParams(task="classify", activation=False), classifier),
        logits,
    )


def test_pooling_params_validation():
    with pytest.raises(InvalidRequestError) as info:
        PoolingParams(task="generate")
    assert info.value.param == "task"
    with pytest.raises(InvalidRequestError):
        PoolingParams(dimensions=0)
    with pytest.raises(InvalidRequestError):
        PoolingParams(truncate_prompt_tokens=0)
    assert PoolingParams(activation=False).use_activation is False
    clone = PoolingParams(task="score", token_type_split=4).clone()
    assert clone.task == "score" and clone.token_type_split == 4


def test_score_pairing_rules():
    assert pair_inputs("q", ["a", "b"]) == [("q", "a"), ("q", "b")]
    assert pair_inputs(["q1", "q2"], ["a", "b"]) == [("q1", "a"), ("q2", "b")]
    assert pair_inputs("q", "a") == [("q", "a")]
    with pytest.raises(InvalidRequestError, match="equally long"):
        pair_inputs(["q1", "q2"], ["a", "b", "c"])
    with pytest.raises(InvalidRequestError):
        pair_inputs([], ["a"])
    texts, indexed = unique_sides(pair_inputs("q", ["a", "q", "a"]))
    assert texts == ["q", "a"]
    assert indexed == [(0, 1), (0, 0), (0, 1)]
