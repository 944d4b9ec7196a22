"""The tiny fixture models load in HF transformers and are deterministic."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import transformers

from mono_llm.core.testing import fixture_names, fixture_path, minilm_path
from mono_llm.core.testing.causal_lm import build_causal_lm

CAUSAL_LMS = [
    "tiny-llama",
    "tiny-mistral",
    "tiny-qwen2",
    "tiny-qwen3",
    "tiny-phi3",
    "tiny-gemma",
    "tiny-gemma2",
    "tiny-granite",
    "tiny-olmo2",
    "tiny-gemma3",
]


def test_fixture_names_cover_the_llama_family():
    assert set(CAUSAL_LMS) <= set(fixture_names())


@pytest.mark.parametrize("name", CAUSAL_LMS)
def test_causal_lm_loads_in_transformers(name):
    path = fixture_path(name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    assert config["hidden_size"] == 64 and config["num_hidden_layers"] == 2
    assert config["num_attention_heads"] == 4 and config["num_key_value_heads"] == 2
    assert 1000 <= len(tokenizer) <= 2000
    assert model.config.vocab_size == len(tokenizer)

    messages = [{"role": "user", "content": "Hello, café 日本"}]
    if not name.startswith("tiny-gemma"):  # Gemma has no system role (see the test below)
        messages.insert(0, {"role": "system", "content": "You are brief."})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "Hello, café 日本" in text
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == text  # byte-level BPE round-trips UTF-8 exactly
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tokenizer))
    assert torch.isfinite(logits).all()
    # Wide init: the top two logits are far apart, so greedy parity has no near-ties.
    top2 = logits[0, -1].topk(2).values
    assert (top2[0] - top2[1]).item() > 1e-3

    generation = json.loads((path / "generation_config.json").read_text())
    eos = generation["eos_token_id"]
    eos_ids = eos if isinstance(eos, list) else [eos]
    assert tokenizer.convert_tokens_to_ids(tokenizer.eos_token) in eos_ids


def test_gemma_template_has_turns_and_refuses_a_system_role():
    tokenizer = transformers.AutoTokenizer.from_pretrained(fixture_path("tiny-gemma"))
    turns = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
    ]
    text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    )
    with pytest.raises(Exception, match="System role not supported"):
        tokenizer.apply_chat_template(
            [{"role": "system", "content": "Be brief."}, *turns], tokenize=False
        )


def test_build_is_deterministic(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    build_causal_lm("tiny-llama", first)
    build_causal_lm("tiny-llama", second)
    for file in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        digest_a = hashlib.sha256((first / file).read_bytes()).hexdigest()
        digest_b = hashlib.sha256((second / file).read_bytes()).hexdigest()
        assert digest_a == digest_b, file


def test_fixture_cache_is_reused():
    assert fixture_path("tiny-llama") == fixture_path("tiny-llama")


def test_unknown_fixture_names_the_known_ones():
    with pytest.raises(KeyError, match="tiny-llama"):
        fixture_path("no-such-model")


def test_minilm_is_available_offline():
    path = minilm_path()
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["BertModel"]
    assert (path / "model.safetensors").is_file()
    assert (path / "modules.json").is_file()
    assert (path / "1_Pooling" / "config.json").is_file()
