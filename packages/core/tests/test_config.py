from __future__ import annotations

from dataclasses import fields

import pytest
import torch

from mono_llm.core import EngineArgs, InvalidRequestError, SamplingParams
from mono_llm.core.config import AsyncEngineArgs, field_docs
from mono_llm.core.errors import UnsupportedModelError
from mono_llm.core.testing import fixture_path


def test_every_engine_arg_is_documented():
    docs = field_docs(EngineArgs)
    missing = [f.name for f in fields(EngineArgs) if not docs.get(f.name)]
    assert missing == []


def test_auto_dtype_follows_checkpoint_and_context_length_from_config():
    config = EngineArgs(model=str(fixture_path("tiny-llama")), device="cpu").create_engine_config()
    assert config.model_config.dtype == torch.float32
    assert config.model_config.max_model_len == 1024
    assert config.scheduler_config.max_num_batched_tokens == 2048


def test_explicit_dtype_and_too_long_context():
    path = str(fixture_path("tiny-llama"))
    config = EngineArgs(model=path, dtype="bfloat16", device="cpu").create_engine_config()
    assert config.model_config.dtype == torch.bfloat16
    with pytest.raises(InvalidRequestError) as err:
        EngineArgs(model=path, max_model_len=4096, device="cpu").create_engine_config()
    assert err.value.param == "max_model_len"


def test_hf_overrides_merge_over_config_json():
    path = str(fixture_path("tiny-llama"))
    overrides = {"max_position_embeddings": 48, "rope_scaling": None, "extra": {"a": 1}}
    config = EngineArgs(model=path, device="cpu", hf_overrides=overrides).create_engine_config()
    assert config.model_config.max_model_len == 48
    assert config.model_config.hf_config["extra"] == {"a": 1}
    assert config.model_config.hf_config["hidden_size"] == 64  # the rest is config.json's
    nested = EngineArgs(
        model=path, device="cpu", hf_overrides='{"extra": {"b": 2}}'
    ).create_engine_config()
    assert nested.model_config.hf_config["extra"] == {"b": 2}


def test_missing_model_folder_is_explained(tmp_path):
    with pytest.raises(UnsupportedModelError, match=r"config\.json"):
        EngineArgs(model=str(tmp_path)).create_engine_config()


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"dtype": "int3"}, "dtype"),
        ({"trust_remote_code": True}, "trust_remote_code"),
        ({"block_size": 12}, "block_size"),
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
        ({"quantization": "fp8"}, "quantization"),
        ({"kv_cache_dtype": "fp8"}, "kv_cache_dtype"),
        ({"pipeline_parallel_size": 2}, "pipeline_parallel_size"),
        ({"hf_overrides": "[1]"}, "hf_overrides"),
        ({"hf_overrides": "{bad"}, "hf_overrides"),
    ],
)
def test_engine_args_validation_names_the_field(kwargs, param):
    with pytest.raises(InvalidRequestError) as err:
        EngineArgs(model="x", **kwargs)
    assert err.value.param == param


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"n": 0}, "n"),
        ({"n": 2, "best_of": 1}, "best_of"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"min_tokens": 5, "max_tokens": 2}, "min_tokens"),
        ({"presence_penalty": 3.0}, "presence_penalty"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"stop": ["ok", ""]}, "stop"),
    ],
)
def test_sampling_params_validation_names_the_field(kwargs, param):
    with pytest.raises(InvalidRequestError) as err:
        SamplingParams(**kwargs)
    assert err.value.param == param
    assert isinstance(err.value, ValueError)


def test_sampling_params_normalisation():
    params = SamplingParams(stop="###", top_k=-1, stop_token_ids=[7], temperature=0.0)
    assert params.stop == ["###"]
    assert params.top_k == 0
    assert params.is_greedy
    assert 7 in params.all_stop_token_ids
    assert SamplingParams(n=2, best_of=4).num_candidates == 4


@pytest.mark.parametrize(
    ("args_cls", "gib", "expected"),
    [
        (EngineArgs, 141, (1024, 16384)),
        (AsyncEngineArgs, 141, (1024, 8192)),
        (EngineArgs, 24, (256, 8192)),
        (AsyncEngineArgs, 24, (256, 8192)),
    ],
)
def test_batch_defaults_follow_gpu_memory_as_vllm(monkeypatch, args_cls, gib, expected) -> None:
    """vLLM's defaults: a 70+ GiB GPU runs 1024 sequences, offline with a 16384-token step and
    in the server with 8192; smaller GPUs keep 256 and 8192."""
    import types

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    props = types.SimpleNamespace(total_memory=gib * 1024**3)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    assert args_cls(model="m")._batch_defaults("cuda") == expected
    assert args_cls(model="m")._batch_defaults("cpu") == (256, 2048)


def test_explicit_batch_limits_win_over_defaults() -> None:
    config = EngineArgs(
        model=str(fixture_path("tiny-llama")), max_num_seqs=7, max_num_batched_tokens=640
    ).create_engine_config()
    assert (
        config.scheduler_config.max_num_seqs,
        config.scheduler_config.max_num_batched_tokens,
    ) == (7, 640)
    default = EngineArgs(model=str(fixture_path("tiny-llama"))).create_engine_config()
    assert (
        default.scheduler_config.max_num_seqs,
        default.scheduler_config.max_num_batched_tokens,
    ) == (256, 2048)
