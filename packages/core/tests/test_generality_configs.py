"""Model folders shaped like real checkpoints we have never seen: other dtypes and config
keys, weight formats and tensor names, huge trained contexts, sliding windows, the
`tokenizer` argument and odd paths. Each is derived from a tiny fixture in a tmp dir and,
where the numbers matter, checked against HF transformers loading the same folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from mono_llm.core import LLM, SamplingParams
from mono_llm.core.config import EngineArgs, sliding_window_in_use
from mono_llm.core.errors import InvalidRequestError, UnsupportedModelError
from mono_llm.core.testing.variants import StateDict, derive_model
from mono_llm.core.worker.batch import LogitsWanted, ModelBatch, SequenceSlice
from mono_llm.core.worker.model_runner import ModelRunner

PROMPT = [0, 11, 250, 3, 999, 42, 7, 600, 5, 18, 77, 123, 64, 1000, 2, 9, 31, 400, 88, 61]
GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


def engine_logits(folder: Path, prompt: list[int] = PROMPT, **kwargs: Any) -> torch.Tensor:
    """Logits of every prompt position from our runner (CPU)."""
    settings: dict[str, Any] = {"max_model_len": 128, "kv_cache_memory_gib": 0.01, **kwargs}
    args = EngineArgs(model=str(folder), device="cpu", max_num_seqs=2, **settings)
    runner = ModelRunner(args.create_engine_config())
    table = list(range(-(-len(prompt) // runner.block_size)))
    return runner.execute(ModelBatch([SequenceSlice(prompt, 0, table, LogitsWanted.ALL)]))


def hf_logits(folder: Path, prompt: list[int] = PROMPT, dtype: Any = torch.float32) -> torch.Tensor:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=dtype, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        return model(torch.tensor([prompt])).logits[0].float()


def greedy(folder: Path | str, **kwargs: Any) -> list[int]:
    llm = LLM(str(folder), device="cpu", max_model_len=128, kv_cache_memory_gib=0.01, **kwargs)
    out = llm.generate({"prompt_token_ids": PROMPT}, GREEDY, use_tqdm=False)
    return list(out[0].outputs[0].token_ids)


@pytest.fixture(scope="module")
def base_logits() -> torch.Tensor:
    from mono_llm.core.testing import fixture_path

    return engine_logits(fixture_path("tiny-llama"))


def _to(dtype: torch.dtype):
    return lambda state: {k: v.to(dtype) for k, v in state.items()}


def test_bfloat16_checkpoint_runs_in_bfloat16_on_cpu_and_tracks_hf(tmp_path: Path) -> None:
    def config(c: dict[str, Any]) -> None:
        c.pop("dtype", None)
        c["torch_dtype"] = "bfloat16"

    folder = derive_model("tiny-llama", tmp_path / "m", config=config, weights=_to(torch.bfloat16))
    engine = EngineArgs(model=str(folder), device="cpu").create_engine_config()
    assert engine.model_config.dtype == torch.bfloat16
    ours = engine_logits(folder)
    exact = hf_logits(folder, dtype=torch.float32)  # the bf16 weights, float32 math
    hf_bf16 = hf_logits(folder, dtype=torch.bfloat16)
    scale = exact.abs().max()
    assert (ours - exact).abs().max() < 0.05 * scale
    # Our bf16 error is of the same size as transformers' own bf16 error.
    assert (ours - exact).abs().mean() < 3 * (hf_bf16 - exact).abs().mean() + 1e-3 * scale


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"torch_dtype": "float16"}, torch.float16),  # released checkpoints
        ({"dtype": "bfloat16"}, torch.bfloat16),  # transformers >= 5 writes `dtype`
        ({"torch_dtype": "torch.bfloat16"}, torch.bfloat16),  # some exports keep the prefix
        ({}, torch.float32),  # neither key
    ],
)
def test_auto_dtype_reads_either_key(tmp_path: Path, keys: dict[str, str], expected: Any) -> None:
    def config(c: dict[str, Any]) -> None:
        c.pop("dtype", None)
        c.pop("torch_dtype", None)
        c.update(keys)

    folder = derive_model("tiny-llama", tmp_path / "m", config=config)
    engine = EngineArgs(model=str(folder), device="cpu").create_engine_config()
    assert engine.model_config.dtype == expected


def test_float16_checkpoint_generates(tmp_path: Path) -> None:
    def config(c: dict[str, Any]) -> None:
        c.pop("dtype", None)
        c["torch_dtype"] = "float16"

    folder = derive_model("tiny-llama", tmp_path / "m", config=config, weights=_to(torch.float16))
    assert len(greedy(folder)) == GREEDY.max_tokens


def test_legacy_config_without_rope_theta_head_dim_or_scaling_matches_hf(tmp_path: Path) -> None:
    """Llama-2 era config.json: rope_scaling null, no rope_theta (10000), no head_dim."""

    def config(c: dict[str, Any]) -> None:
        c.pop("rope_parameters", None)
        c.pop("head_dim", None)
        c["rope_scaling"] = None

    folder = derive_model("tiny-llama", tmp_path / "m", config=config)
    torch.testing.assert_close(engine_logits(folder), hf_logits(folder), atol=2e-4, rtol=1e-4)


def test_huge_trained_context_keeps_cpu_defaults_sane(tmp_path: Path) -> None:
    folder = derive_model(
        "tiny-llama", tmp_path / "m", config=lambda c: c.update(max_position_embeddings=131072)
    )
    engine = EngineArgs(model=str(folder), device="cpu").create_engine_config()
    assert engine.model_config.max_model_len == 131072
    assert engine.scheduler_config.max_num_batched_tokens == 2048  # chunked prefill budget
    llm = LLM(str(folder), device="cpu", kv_cache_memory_gib=0.01)
    core = llm.llm_engine
    capacity = core.kv_cache.num_blocks * core.kv_cache.block_size
    assert capacity < 131072
    # The usable context is what the KV cache holds, and that is what the config reports.
    assert core.max_seq_len == capacity == core.model_config.max_model_len
    out = llm.generate({"prompt_token_ids": PROMPT}, GREEDY, use_tqdm=False)[0].outputs[0]
    assert len(out.token_ids) == GREEDY.max_tokens


def test_tied_embeddings_without_lm_head_tensor_match_hf(tmp_path: Path) -> None:
    def weights(state: StateDict) -> None:
        del state["lm_head.weight"]

    folder = derive_model(
        "tiny-llama",
        tmp_path / "m",
        config=lambda c: c.update(tie_word_embeddings=True),
        weights=weights,
    )
    torch.testing.assert_close(engine_logits(folder), hf_logits(folder), atol=2e-4, rtol=1e-4)


def test_bare_tensor_names_and_unused_rope_buffers_load(
    tmp_path: Path, base_logits: torch.Tensor
) -> None:
    def weights(state: StateDict) -> StateDict:
        out = {k.removeprefix("model."): v for k, v in state.items()}
        for layer in range(2):
            out[f"layers.{layer}.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
        out["model.rotary_emb.inv_freq"] = torch.ones(8)
        return out

    folder = derive_model("tiny-llama", tmp_path / "m", weights=weights)
    torch.testing.assert_close(engine_logits(folder), base_logits, atol=0, rtol=0)


def test_unknown_checkpoint_tensor_is_named(tmp_path: Path) -> None:
    def weights(state: StateDict) -> None:
        state["model.layers.0.mystery.weight"] = torch.ones(2)

    folder = derive_model("tiny-llama", tmp_path / "m", weights=weights)
    with pytest.raises(UnsupportedModelError, match="mystery"):
        engine_logits(folder)


@pytest.mark.parametrize("shards", [1, 3])
def test_pytorch_bin_checkpoints_load(
    tmp_path: Path, base_logits: torch.Tensor, shards: int
) -> None:
    folder = derive_model("tiny-llama", tmp_path / "m", weight_format="bin", shards=shards)
    assert not list(folder.glob("*.safetensors"))
    (folder / "training_args.bin").write_bytes(b"not weights")  # trainer leftovers are skipped
    torch.testing.assert_close(engine_logits(folder), base_logits, atol=0, rtol=0)
    with pytest.raises(UnsupportedModelError, match="load_format='safetensors'"):
        engine_logits(folder, load_format="safetensors")


def test_pytorch_bin_holding_code_is_refused(tmp_path: Path) -> None:
    folder = derive_model("tiny-llama", tmp_path / "m", weight_format="bin")
    torch.save(
        {"model.norm.weight": torch.ones(64), "hook": logging.Logger}, folder / "pytorch_model.bin"
    )
    with pytest.raises(UnsupportedModelError, match="weights_only=True"):
        engine_logits(folder)


def test_sharded_safetensors_with_index(tmp_path: Path, base_logits: torch.Tensor) -> None:
    folder = derive_model("tiny-llama", tmp_path / "m", shards=2)
    assert (folder / "model.safetensors.index.json").is_file()
    torch.testing.assert_close(engine_logits(folder), base_logits, atol=0, rtol=0)


def _sliding(window: int, **extra: Any):
    return lambda c: c.update(sliding_window=window, **extra)


def test_mistral_sliding_window_caps_context_and_matches_hf(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = derive_model("tiny-mistral", tmp_path / "m", config=_sliding(32))
    with caplog.at_level(logging.WARNING, logger="mono_llm.core.config"):
        engine = EngineArgs(model=str(folder), device="cpu").create_engine_config()
    assert engine.model_config.max_model_len == 32
    assert any("sliding-window" in r.getMessage() for r in caplog.records)
    with pytest.raises(InvalidRequestError, match="sliding attention window") as info:
        EngineArgs(model=str(folder), max_model_len=64).create_engine_config()
    assert info.value.param == "max_model_len"
    prompt = PROMPT + PROMPT[1:13]  # 32 tokens: the whole window
    torch.testing.assert_close(
        engine_logits(folder, prompt, max_model_len=32),
        hf_logits(folder, prompt),
        atol=2e-4,
        rtol=1e-4,
    )


def test_gemma2_applies_its_windows_and_keeps_the_context(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Gemma 2's class applies the sliding window itself: the context is not capped to it, and
    a released-style config without `layer_types` (even layers sliding) is the same model."""
    from mono_llm.core.testing import fixture_path

    folder = fixture_path("tiny-gemma2")
    with caplog.at_level(logging.WARNING):
        engine = EngineArgs(model=str(folder), device="cpu").create_engine_config()
    assert sliding_window_in_use(engine.model_config.hf_config) == 16
    assert engine.model_config.max_model_len == 1024  # the trained context, not the window
    assert not any("sliding" in r.getMessage() for r in caplog.records)
    legacy = derive_model("tiny-gemma2", tmp_path / "legacy", config=lambda c: c.pop("layer_types"))
    prompt = PROMPT * 3  # 60 tokens: past the 16-token window
    expected = hf_logits(folder, prompt)
    torch.testing.assert_close(engine_logits(legacy, prompt), expected, atol=2e-4, rtol=1e-4)


def _gemma3_released_config(config: dict[str, Any]) -> None:
    """tiny-gemma3's config.json as released Gemma 3 checkpoints spell it (gemma-3-1b-it,
    gemma-3-4b+'s text config): top-level rope_theta, rope_local_base_freq and rope_scaling,
    sliding_window_pattern instead of layer_types, and no architectures (model_type only)."""
    params = config.pop("rope_parameters")
    full, local = dict(params["full_attention"]), params["sliding_attention"]
    config["rope_theta"] = full.pop("rope_theta")
    config["rope_local_base_freq"] = local["rope_theta"]
    config["rope_scaling"] = {**full, "type": full.pop("rope_type")}
    assert config.pop("layer_types") == ["sliding_attention", "full_attention"]
    config.pop("_sliding_window_pattern", None)
    config["sliding_window_pattern"] = 2  # every 2nd layer full: sliding, full
    config.pop("architectures")


def test_gemma3_keeps_the_context_and_reads_released_configs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Gemma 3's class applies its windows (the context is not capped to them), and the
    released config spelling is the same model as transformers 5's rope_parameters form: the
    sliding layer rotates with base 10000 unscaled, the full one with 1e6 scaled by 8."""
    from mono_llm.core.testing import fixture_path

    folder = fixture_path("tiny-gemma3")
    with caplog.at_level(logging.WARNING):
        engine = EngineArgs(model=str(folder), device="cpu").create_engine_config()
    assert sliding_window_in_use(engine.model_config.hf_config) == 16
    assert engine.model_config.max_model_len == 1024
    assert not any("sliding" in r.getMessage() for r in caplog.records)
    released = derive_model("tiny-gemma3", tmp_path / "released", config=_gemma3_released_config)
    released_config = EngineArgs(model=str(released), device="cpu").create_engine_config()
    assert released_config.model_config.hf_config["architectures"] == ["Gemma3ForCausalLM"]
    prompt = PROMPT * 3  # 60 tokens: past the 16-token window
    expected = hf_logits(folder, prompt)
    torch.testing.assert_close(engine_logits(released, prompt), expected, atol=2e-4, rtol=1e-4)
    # The released spelling loads in transformers as the same model.
    torch.testing.assert_close(hf_logits(released, prompt), expected, atol=1e-5, rtol=1e-5)


def test_bidirectional_gemma3_is_refused(tmp_path: Path) -> None:
    """EmbeddingGemma's config (gemma3_text with use_bidirectional_attention) is refused by
    name instead of being run with a causal mask."""
    folder = derive_model(
        "tiny-gemma3",
        tmp_path / "bidirectional",
        config=lambda c: c.update(
            architectures=["Gemma3TextModel"], use_bidirectional_attention=True
        ),
    )
    with pytest.raises(UnsupportedModelError, match="use_bidirectional_attention"):
        LLM(str(folder), device="cpu", max_model_len=128, kv_cache_memory_gib=0.01)


@pytest.mark.parametrize(
    ("base", "edit", "window"),
    [
        ("tiny-mistral", {"sliding_window": 4096}, None),  # longer than the context: no-op
        ("tiny-mistral", {"sliding_window": None}, None),  # Mistral v0.2+
        ("tiny-qwen2", {"sliding_window": 32, "use_sliding_window": False}, None),
        (
            "tiny-qwen2",
            {"sliding_window": 32, "use_sliding_window": True, "max_window_layers": 2},
            None,  # every layer below max_window_layers: full attention
        ),
        (
            "tiny-qwen2",
            {"sliding_window": 32, "use_sliding_window": True, "max_window_layers": 1},
            32,
        ),
        ("tiny-mistral", {"sliding_window": 32}, 32),
        (  # transformers 5 spells the per-layer choice out
            "tiny-qwen2",
            {
                "sliding_window": 32,
                "use_sliding_window": True,
                "layer_types": ["full_attention", "sliding_attention"],
            },
            32,
        ),
        (
            "tiny-qwen2",
            {
                "sliding_window": 32,
                "use_sliding_window": True,
                "layer_types": ["full_attention", "full_attention"],
            },
            None,
        ),
    ],
)
def test_which_configs_really_use_a_sliding_window(
    tmp_path: Path, base: str, edit: dict[str, Any], window: int | None
) -> None:
    def config(c: dict[str, Any]) -> None:
        c.pop("layer_types", None)  # as released checkpoints (written before transformers 5)
        c.update(edit)

    folder = derive_model(base, tmp_path / "m", config=config)
    assert sliding_window_in_use(json.loads((folder / "config.json").read_text())) == window
    engine = EngineArgs(model=str(folder), device="cpu").create_engine_config()
    assert engine.model_config.max_model_len == (window or 1024)


def test_unsupported_architecture_fails_at_config_time(tmp_path: Path) -> None:
    folder = derive_model(
        "tiny-llama", tmp_path / "m", config=lambda c: c.update(architectures=["MambaForCausalLM"])
    )
    with pytest.raises(UnsupportedModelError) as info:
        EngineArgs(model=str(folder)).create_engine_config()
    message = str(info.value)
    assert "MambaForCausalLM" in message and "LlamaForCausalLM" in message
    assert "\n" not in message


def test_tokenizer_elsewhere_tilde_and_trailing_slash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    tokenizer_files = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
    folder = derive_model("tiny-llama", tmp_path / "weights", remove=tokenizer_files)
    tokenizer_dir = derive_model("tiny-llama", tmp_path / "tok")
    with pytest.raises(UnsupportedModelError, match="tokenizer"):
        LLM("~/weights/", device="cpu", max_model_len=64, kv_cache_memory_gib=0.01)
    llm = LLM(
        "~/weights/", tokenizer="~/tok/", device="cpu", max_model_len=64, kv_cache_memory_gib=0.01
    )
    config = llm.llm_engine.model_config
    assert Path(config.model) == folder and Path(config.tokenizer) == tokenizer_dir
    assert config.served_model_name == "~/weights/"  # as given, like vLLM
    out = llm.generate("Hello world", GREEDY, use_tqdm=False)[0]
    assert out.prompt_token_ids[0] == 0 and len(out.outputs[0].token_ids) == GREEDY.max_tokens


def test_quantized_checkpoint_is_refused_at_config_time(tmp_path: Path) -> None:
    quantization = {"quant_method": "awq", "bits": 4, "group_size": 128}
    folder = derive_model(
        "tiny-llama", tmp_path / "m", config=lambda c: c.update(quantization_config=quantization)
    )
    with pytest.raises(UnsupportedModelError, match=r"quantized checkpoint.*awq"):
        EngineArgs(model=str(folder)).create_engine_config()


def test_architectures_missing_falls_back_to_model_type(
    tmp_path: Path, base_logits: torch.Tensor
) -> None:
    folder = derive_model("tiny-llama", tmp_path / "m", config=lambda c: c.pop("architectures"))
    torch.testing.assert_close(engine_logits(folder), base_logits, atol=0, rtol=0)
    unknown = derive_model(
        "tiny-llama",
        tmp_path / "u",
        config=lambda c: (c.pop("architectures"), c.update(model_type="mamba")),
    )
    with pytest.raises(UnsupportedModelError, match=r"none in config\.json"):
        EngineArgs(model=str(unknown)).create_engine_config()


def test_mistral_native_consolidated_file_beside_hf_weights_is_ignored(
    tmp_path: Path, base_logits: torch.Tensor
) -> None:
    from safetensors.torch import save_file

    folder = derive_model("tiny-llama", tmp_path / "m")
    save_file(
        {"layers.0.attention.wq.weight": torch.ones(2, 2)}, folder / "consolidated.safetensors"
    )
    torch.testing.assert_close(engine_logits(folder), base_logits, atol=0, rtol=0)


@pytest.mark.parametrize(
    "scaling",
    [{"rope_type": "longrope", "factor": 4.0}, {"type": "linear"}],
    ids=["unknown-type", "linear-without-factor"],
)
def test_unsupported_rope_scaling_fails_at_config_time(
    tmp_path: Path, scaling: dict[str, Any]
) -> None:
    def config(c: dict[str, Any]) -> None:
        c.pop("rope_parameters", None)
        c.update(rope_theta=10000.0, rope_scaling=scaling)

    folder = derive_model("tiny-llama", tmp_path / "m", config=config)
    with pytest.raises(UnsupportedModelError, match="rope_scaling"):
        EngineArgs(model=str(folder)).create_engine_config()


def test_yarn_without_original_length_scales_from_the_declared_context(tmp_path: Path) -> None:
    def config(c: dict[str, Any]) -> None:
        c.pop("rope_parameters", None)
        c.update(rope_theta=10000.0, rope_scaling={"type": "yarn", "factor": 4.0})

    folder = derive_model("tiny-llama", tmp_path / "m", config=config)
    prompt = PROMPT * 4
    torch.testing.assert_close(
        engine_logits(folder, prompt), hf_logits(folder, prompt), atol=2e-4, rtol=1e-4
    )


def test_every_model_type_fallback_names_a_supported_architecture() -> None:
    from mono_llm.core.config import _CAUSAL_LM_BY_MODEL_TYPE
    from mono_llm.core.models.registry import supported_architectures

    assert set(_CAUSAL_LM_BY_MODEL_TYPE.values()) <= set(supported_architectures())
