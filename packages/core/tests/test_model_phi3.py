"""Phi-3 (Phi3ForCausalLM) against HF transformers: LongRoPE on either side of the original
context, partial rotary, checkpoint-fused qkv_proj / gate_up_proj, legacy config spellings,
the sliding-window cap, tensor parallelism and the sequence-classification head.

tiny-phi3 is shaped like Phi-4-mini (3/4 of each head rotated, LongRoPE, tied embeddings) with
an original context of 512; the `long_context` variant moves that to 32 so prompts cross it.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from mono_llm.core import LLM, EngineArgs, SamplingParams
from mono_llm.core.errors import UnsupportedModelError
from mono_llm.core.layers.rotary import RotaryEmbedding, partial_rotary_dim, rope_settings
from mono_llm.core.testing import fixture_path
from mono_llm.core.testing.variants import derive_model

NEW_TOKENS = 16
ORIGINAL = 32  # original_max_position_embeddings of the long-context variant


def _set_original(config: dict[str, Any], original: int = ORIGINAL) -> None:
    config["original_max_position_embeddings"] = original
    config["rope_parameters"]["original_max_position_embeddings"] = original


@functools.cache
def long_context(root: Path) -> Path:
    return derive_model("tiny-phi3", root / "phi3-long", config=_set_original)


@pytest.fixture(scope="module")
def long_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return long_context(tmp_path_factory.mktemp("phi3"))


def _hf(folder: Path) -> torch.nn.Module:
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def _hf_greedy(model: torch.nn.Module, prompt: list[int]) -> tuple[list[int], list[float]]:
    import transformers

    model.generation_config = transformers.GenerationConfig(
        do_sample=False, max_new_tokens=NEW_TOKENS, pad_token_id=0
    )
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]), output_logits=True, return_dict_in_generate=True
        )
    tokens = out.sequences[0, len(prompt) :].tolist()
    logprobs = [
        torch.log_softmax(step[0].float(), -1)[token].item()
        for step, token in zip(out.logits, tokens, strict=True)
    ]
    return tokens, logprobs


def _greedy(llm: LLM, prompts: list[list[int]]) -> list[tuple[list[int], list[float]]]:
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=1)
    results = []
    for out in llm.generate([{"prompt_token_ids": p} for p in prompts], params):
        completion = out.outputs[0]
        logprobs = [
            entry[token].logprob
            for entry, token in zip(completion.logprobs, completion.token_ids, strict=True)
        ]
        results.append((completion.token_ids, logprobs))
    return results


def _prompt(length: int, seed: int = 0) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(10, 1200, (length,), generator=gen).tolist()


# ----------------------------------------------------------------------------- rotary


@pytest.mark.parametrize("long", [False, True], ids=["short-factors", "long-factors"])
@pytest.mark.parametrize("legacy_type", ["longrope", "su"])
def test_rotary_matches_transformers_phi3_rotary(long: bool, legacy_type: str) -> None:
    """The shared RotaryEmbedding with partial rotary and LongRoPE rotates q and k exactly as
    transformers' Phi3RotaryEmbedding + apply_rotary_pos_emb on the same inputs."""
    import transformers
    from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding, apply_rotary_pos_emb

    heads, kv_heads, head_dim, trained = 4, 2, 32, 256
    short = [1.0, 1.1, 1.3, 1.7, 2.2, 3.0, 4.1, 5.0, 6.5, 8.0, 9.0, 11.0]
    longf = [1.0, 2.0, 3.5, 5.0, 8.0, 12.0, 16.0, 20.0, 25.0, 31.0, 40.0, 48.0]
    config = {
        "hidden_size": heads * head_dim,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": trained,
        "original_max_position_embeddings": ORIGINAL,
        "partial_rotary_factor": 0.75,  # 24 of 32 dims rotated: 12 frequencies
        "rope_theta": 10000.0,
        "rope_scaling": {"type": legacy_type, "short_factor": short, "long_factor": longf},
    }
    hf_config = transformers.Phi3Config(
        **{**config, "rope_scaling": {**config["rope_scaling"], "type": "longrope"}}
    )
    hf_rope = Phi3RotaryEmbedding(hf_config)
    theta, scaling = rope_settings(config)
    assert scaling is not None and scaling["rope_type"] == "longrope"
    rotary_dim = partial_rotary_dim(config, head_dim)
    assert rotary_dim == 24
    ours = RotaryEmbedding(
        head_dim, trained, theta, scaling, rotary_dim=rotary_dim,
        context_len=trained if long else ORIGINAL,
    )  # fmt: skip
    ours.build_cache(torch.device("cpu"))
    # HF picks the factor set by the longest position it is given.
    positions = torch.tensor([0, 1, 5, 17, 31] + ([40, 100, 255] if long else []))
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(len(positions), heads, head_dim, generator=gen)
    k = torch.randn(len(positions), kv_heads, head_dim, generator=gen)
    cos, sin = hf_rope(q, positions[None])
    want_q, want_k = apply_rotary_pos_emb(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin
    )
    got_q, got_k = ours(positions, q, k)
    torch.testing.assert_close(got_q, want_q[0].transpose(0, 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_k, want_k[0].transpose(0, 1), atol=1e-5, rtol=1e-5)
    assert torch.equal(got_q[..., rotary_dim:], q[..., rotary_dim:])  # the rest passes through
    # sqrt(1 + ln(256 / 32) / ln(32)) scales cos and sin, whichever set is in use.
    assert hf_rope.attention_scaling == pytest.approx(math.sqrt(1 + math.log(8) / math.log(32)))


def test_longrope_factor_count_is_checked() -> None:
    from mono_llm.kernels import rope_cos_sin_cache

    spec = {
        "rope_type": "longrope",
        "short_factor": [1.0, 2.0],
        "long_factor": [1.0, 2.0, 3.0],
        "original_max_position_embeddings": 8,
    }
    with pytest.raises(ValueError, match="long_factor has 3 entries"):
        rope_cos_sin_cache(4, 16, 10000.0, spec)


# ----------------------------------------------------------------------------- generate


def test_long_prompts_use_long_factors_and_match_hf(long_folder: Path) -> None:
    """max_model_len (256) past the original context (32): the long factors for every
    sequence, as transformers uses them for sequences longer than 32 tokens."""
    prompts = [_prompt(40, 1), _prompt(57, 2)]
    hf = _hf(long_folder)
    llm = LLM(str(long_folder), max_model_len=256, seed=0, num_gpu_blocks_override=64)
    for prompt, (tokens, logprobs) in zip(prompts, _greedy(llm, prompts), strict=True):
        hf_tokens, hf_logprobs = _hf_greedy(hf, prompt)
        assert tokens == hf_tokens
        assert logprobs == pytest.approx(hf_logprobs, abs=1e-3)


def test_short_context_uses_short_factors_and_matches_hf(long_folder: Path) -> None:
    """max_model_len within the original context: the short factors, as transformers; the
    same short prompt under a long max_model_len runs with the long factors instead."""
    prompt = _prompt(12, 3)
    hf_tokens, hf_logprobs = _hf_greedy(_hf(long_folder), prompt)
    short = LLM(str(long_folder), max_model_len=ORIGINAL, seed=0, num_gpu_blocks_override=16)
    [(tokens, logprobs)] = _greedy(short, [prompt])
    assert tokens == hf_tokens
    assert logprobs == pytest.approx(hf_logprobs, abs=1e-3)
    wide = LLM(str(long_folder), max_model_len=256, seed=0, num_gpu_blocks_override=64)
    [(_, wide_logprobs)] = _greedy(wide, [prompt])
    assert wide_logprobs != pytest.approx(hf_logprobs, abs=1e-3)


# ----------------------------------------------------------------------------- configs


def _first_logprobs(folder: Path, prompt: list[int]) -> list[float]:
    llm = LLM(str(folder), max_model_len=64, seed=0, num_gpu_blocks_override=16)
    return _greedy(llm, [prompt])[0][1]


def test_released_config_spelling_gives_the_same_model(tmp_path: Path) -> None:
    """Phi-3 checkpoints on the hub write `rope_scaling` (type "longrope"), a top-level
    rope_theta and partial_rotary_factor, no `rope_parameters`, and keep the original
    context only at the top level: the same logits as transformers 5's spelling. (The early
    type name "su" is read too, see the rotary test; transformers 5 itself no longer loads
    such a config.json.)"""

    def legacy(config: dict[str, Any]) -> None:
        params = config.pop("rope_parameters")
        config["rope_theta"] = params.pop("rope_theta")
        params.pop("rope_type")
        params.pop("partial_rotary_factor")
        params.pop("original_max_position_embeddings")
        config["rope_scaling"] = {"type": "longrope", **params}

    folder = derive_model("tiny-phi3", tmp_path / "legacy", config=legacy)
    saved = json.loads((folder / "config.json").read_text())
    assert "rope_parameters" not in saved and saved["rope_scaling"]["type"] == "longrope"
    prompt = _prompt(20, 4)
    assert _first_logprobs(folder, prompt) == _first_logprobs(fixture_path("tiny-phi3"), prompt)


def test_sliding_window_caps_max_model_len(tmp_path: Path) -> None:
    """Phi-3-mini-4k: sliding_window 2047 of 4096 positions; within the window full and
    windowed attention agree, so the context is capped there (a longer request is refused)."""
    folder = derive_model(
        "tiny-phi3", tmp_path / "window", config=lambda c: c.update(sliding_window=100)
    )
    config = EngineArgs(model=str(folder), device="cpu").create_engine_config()
    assert config.model_config.max_model_len == 100
    from mono_llm.core.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="sliding attention window"):
        EngineArgs(model=str(folder), device="cpu", max_model_len=200).create_engine_config()


def test_fused_checkpoint_tensor_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    def cut(state: dict[str, torch.Tensor]) -> None:
        name = "model.layers.1.self_attn.qkv_proj.weight"
        state[name] = state[name][:-16].clone()

    folder = derive_model("tiny-phi3", tmp_path / "cut", weights=cut)
    with pytest.raises(UnsupportedModelError, match=r"qkv_proj\.weight has 112 rows"):
        LLM(str(folder), max_model_len=64, num_gpu_blocks_override=16)


def test_untied_lm_head_is_loaded(tmp_path: Path) -> None:
    """Phi-3-mini / medium do not tie: their own lm_head.weight is read, not the embedding."""

    def untie(state: dict[str, torch.Tensor]) -> None:
        gen = torch.Generator().manual_seed(5)
        embed = state["model.embed_tokens.weight"]
        state["lm_head.weight"] = torch.randn(embed.shape, generator=gen) * 0.2

    folder = derive_model(
        "tiny-phi3",
        tmp_path / "untied",
        config=lambda c: c.update(tie_word_embeddings=False),
        weights=untie,
    )
    prompt = _prompt(15, 6)
    hf_tokens, hf_logprobs = _hf_greedy(_hf(folder), prompt)
    llm = LLM(str(folder), max_model_len=64, seed=0, num_gpu_blocks_override=16)
    [(tokens, logprobs)] = _greedy(llm, [prompt])
    assert tokens == hf_tokens
    assert logprobs == pytest.approx(hf_logprobs, abs=1e-3)


def test_sequence_classification_head_matches_hf(tmp_path: Path) -> None:
    """Phi3ForSequenceClassification: the same decoder body with a `score` head. (Served
    within the original context, so that the short factors apply, as in transformers.)"""
    import transformers

    base = fixture_path("tiny-phi3")
    config = transformers.AutoConfig.from_pretrained(base)
    config.num_labels = 3
    config.architectures = ["Phi3ForSequenceClassification"]
    torch.manual_seed(0)
    hf = transformers.Phi3ForSequenceClassification(config).float().eval()
    folder = tmp_path / "classifier"
    hf.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(base / name, folder / name)
    texts = ["the quick brown fox", "hello there, how are you today?"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    outputs = LLM(str(folder), max_model_len=512).classify(texts)
    for text, out in zip(texts, outputs, strict=True):
        with torch.no_grad():
            logits = hf(**tokenizer(text, return_tensors="pt")).logits[0]
        assert out.outputs.probs == pytest.approx(logits.softmax(-1).tolist(), abs=1e-5)


# ----------------------------------------------------------------------------- parallel


def test_tensor_parallel_two_ranks_equal_one() -> None:
    """Each rank cuts its q/k/v heads and gate/up rows out of the fused checkpoint tensors;
    greedy tokens and logprobs equal a single device's (gloo, CPU)."""
    folder = fixture_path("tiny-phi3")
    prompts = [_prompt(9, 7), _prompt(30, 8)]

    def run(tp: int) -> list[tuple[list[int], list[float]]]:
        llm = LLM(
            str(folder), max_model_len=128, seed=0, num_gpu_blocks_override=64,
            max_num_batched_tokens=32, tensor_parallel_size=tp,
        )  # fmt: skip
        return _greedy(llm, prompts)

    one, two = run(1), run(2)
    for (tokens_1, logprobs_1), (tokens_2, logprobs_2) in zip(one, two, strict=True):
        assert tokens_2 == tokens_1
        assert logprobs_2 == pytest.approx(logprobs_1, abs=1e-4)
