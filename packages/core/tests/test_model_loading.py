"""Model loading: registry errors, config styles, sharded safetensors, dummy weights, tying."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mono_llm.core.config import EngineArgs
from mono_llm.core.errors import UnsupportedModelError
from mono_llm.core.layers.rotary import rope_settings
from mono_llm.core.models import resolve_model_class, supported_architectures
from mono_llm.core.testing import fixture_path
from mono_llm.core.worker.batch import LogitsWanted, ModelBatch, SequenceSlice
from mono_llm.core.worker.model_runner import ModelRunner

PROMPT = [11, 250, 3, 999, 42, 7, 600, 5, 18, 77, 123, 64, 1000, 2, 9, 31, 400]


def make_runner(model: Path | str, **kwargs: object) -> ModelRunner:
    settings: dict[str, object] = {"kv_cache_memory_gib": 0.01, **kwargs}
    args = EngineArgs(model=str(model), device="cpu", max_num_seqs=4, max_model_len=128, **settings)
    return ModelRunner(args.create_engine_config())


def prompt_logits(runner: ModelRunner, prompt: list[int] = PROMPT) -> torch.Tensor:
    table = list(range(-(-len(prompt) // runner.block_size)))
    return runner.execute(ModelBatch([SequenceSlice(prompt, 0, table, LogitsWanted.ALL)]))


def copy_fixture(name: str, dest: Path, *, weights: bool = True) -> Path:
    src = fixture_path(name)
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if weights or not f.name.endswith(".safetensors"):
            shutil.copy(f, dest / f.name)
    return dest


def test_unsupported_architecture_names_the_supported_ones(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModelError) as info:
        resolve_model_class(["MambaForCausalLM"])
    message = str(info.value)
    assert "MambaForCausalLM" in message
    for arch in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"):
        assert arch in message and arch in supported_architectures()
    folder = copy_fixture("tiny-llama", tmp_path / "m", weights=False)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["FalconForCausalLM"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match=r"Supported architectures: .*Qwen3ForCausalLM"):
        make_runner(folder, load_format="dummy")


def test_rope_settings_read_both_config_styles() -> None:
    new_style = {
        "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0},
    }
    old_style = {"rope_theta": 5e5, "rope_scaling": {"type": "llama3", "factor": 8.0}}
    assert (
        rope_settings(new_style)
        == rope_settings(old_style)
        == (5e5, {"rope_type": "llama3", "factor": 8.0})
    )
    assert rope_settings({"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}) == (
        1e6,
        None,
    )
    assert rope_settings({}) == (10000.0, None)
    assert rope_settings({"rope_theta": 1e4, "rope_scaling": None}) == (1e4, None)


def test_legacy_rope_scaling_config_gives_the_same_logits(tmp_path: Path) -> None:
    """A released-checkpoint style config (rope_scaling + top-level rope_theta, torch_dtype,
    no head_dim) loads the same model as the transformers-5 style one."""
    folder = copy_fixture("tiny-llama", tmp_path / "legacy")
    config = json.loads((folder / "config.json").read_text())
    params = config.pop("rope_parameters")
    config["rope_theta"] = params.pop("rope_theta")
    config["rope_scaling"] = {**params, "type": params.pop("rope_type")}
    config.pop("head_dim")  # hidden_size / num_attention_heads = 16 as before
    config.pop("dtype")
    (folder / "config.json").write_text(json.dumps(config))
    expected = prompt_logits(make_runner(fixture_path("tiny-llama")))
    torch.testing.assert_close(prompt_logits(make_runner(folder)), expected)


def test_sharded_safetensors_with_index_load_identically(tmp_path: Path) -> None:
    folder = copy_fixture("tiny-qwen2", tmp_path / "sharded", weights=False)
    tensors = load_file(fixture_path("tiny-qwen2") / "model.safetensors")
    names = sorted(tensors)
    shards = [names[0::3], names[1::3], names[2::3]]
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: tensors[n] for n in shard}, folder / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    expected = prompt_logits(make_runner(fixture_path("tiny-qwen2")))
    torch.testing.assert_close(prompt_logits(make_runner(folder)), expected, atol=0, rtol=0)
    # A checkpoint missing tensors is refused, naming what is missing.
    (folder / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(UnsupportedModelError, match="not in the folder"):
        make_runner(folder)
    del weight_map[names[1]]  # the index no longer names the deleted shard's tensors
    weight_map = {n: f for n, f in weight_map.items() if "00002" not in f}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(UnsupportedModelError, match="lacks"):
        make_runner(folder)


def test_tied_word_embeddings_match_hf(tmp_path: Path) -> None:
    import transformers

    folder = copy_fixture("tiny-qwen3", tmp_path / "tied", weights=False)
    tensors = load_file(fixture_path("tiny-qwen3") / "model.safetensors")
    del tensors["lm_head.weight"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config["tie_word_embeddings"] = True
    (folder / "config.json").write_text(json.dumps(config))
    runner = make_runner(folder)
    assert runner.model.lm_head.weight is runner.model.model.embed_tokens.weight
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        expected = hf(torch.tensor([PROMPT])).logits[0]
    torch.testing.assert_close(prompt_logits(runner), expected, atol=2e-4, rtol=1e-4)


def test_dummy_weights_are_seeded_and_shaped(tmp_path: Path) -> None:
    folder = copy_fixture("tiny-mistral", tmp_path / "dummy", weights=False)  # no checkpoint
    a = make_runner(folder, load_format="dummy", seed=1)
    b = make_runner(folder, load_format="dummy", seed=1)
    c = make_runner(folder, load_format="dummy", seed=2)
    real = make_runner(fixture_path("tiny-mistral"))
    shapes = {n: p.shape for n, p in real.model.named_parameters()}
    assert {n: p.shape for n, p in a.model.named_parameters()} == shapes
    logits_a, logits_b, logits_c = (prompt_logits(r) for r in (a, b, c))
    assert torch.isfinite(logits_a).all()
    torch.testing.assert_close(logits_a, logits_b, atol=0, rtol=0)
    assert not torch.allclose(logits_a, logits_c)
    assert logits_a.std() > 0


def test_kv_cache_is_sized_from_memory_and_capped(tmp_path: Path) -> None:
    path = fixture_path("tiny-llama")
    runner = make_runner(path)  # 0.01 GiB is far more than 4 x 128 tokens need: capped
    assert runner.num_blocks == 4 * (128 // 16)
    assert runner.config.cache_config.num_blocks == runner.num_blocks
    small = make_runner(path, kv_cache_memory_gib=2 * 4096 / 1024**3)
    per_block = 2 * 2 * 16 * 2 * 16 * 4  # layers * (k, v) * block * kv_heads * head_dim * fp32
    assert small.kv_cache_bytes_per_block == per_block
    assert small.num_blocks == 2 * 4096 // per_block
    exact = make_runner(path, num_gpu_blocks_override=5)
    assert exact.num_blocks == 5 and exact.kv_cache.shape[2] == 5


def test_execute_hidden_gives_final_hidden_states() -> None:
    """Pooling reads every token's final (normed) hidden state; HF's last hidden_states match."""
    import transformers

    runner = make_runner(fixture_path("tiny-qwen2"))
    table = list(range(-(-len(PROMPT) // runner.block_size)))
    hidden = runner.execute_hidden(ModelBatch([SequenceSlice(PROMPT, 0, table)]))
    assert hidden.shape == (len(PROMPT), runner.hidden_size)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        fixture_path("tiny-qwen2"), dtype=torch.float32
    )
    with torch.no_grad():
        expected = hf(torch.tensor([PROMPT]), output_hidden_states=True).hidden_states[-1][0]
    torch.testing.assert_close(hidden, expected, atol=2e-5, rtol=1e-4)


def test_torch_ops_escape_hatch_parses_names(monkeypatch: pytest.MonkeyPatch) -> None:
    from mono_llm.core.layers.ops import OP_NAMES, torch_ops_requested

    monkeypatch.setenv("MONO_LLM_TORCH_OPS", "paged_attention, rms_norm")
    assert torch_ops_requested() == {"paged_attention", "rms_norm"}
    monkeypatch.setenv("MONO_LLM_TORCH_OPS", "all")
    assert torch_ops_requested() == set(OP_NAMES)
    monkeypatch.setenv("MONO_LLM_TORCH_OPS", "flash_attention")
    with pytest.raises(ValueError, match="unknown ops"):
        torch_ops_requested()
