"""Tokenizer folders as they come: a bare tokenizer.json, chat templates as a string, a list
of named templates, a chat_template.jinja / chat_template.json file or none at all, a
Llama-2 sentencepiece tokenizer.model, added tokens beyond the base vocabulary, embeddings
padded past the tokenizer, EOS lists and generation_config defaults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from mono_llm.core import LLM, SamplingParams
from mono_llm.core.engine.generation_config import eos_token_ids
from mono_llm.core.errors import InvalidRequestError
from mono_llm.core.testing import fixture_path
from mono_llm.core.testing.variants import StateDict, derive_model, train_sentencepiece
from mono_llm.core.tokenizer import decodable_vocab_size, load_tokenizer

CHAT = [{"role": "user", "content": "Hello there"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
GREEDY = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def make_llm(folder: Path | str, **kwargs: Any) -> LLM:
    settings: dict[str, Any] = {"max_model_len": 128, "kv_cache_memory_gib": 0.01, **kwargs}
    return LLM(str(folder), device="cpu", **settings)


def base_template() -> str:
    return json.loads((fixture_path("tiny-llama") / "tokenizer_config.json").read_text())[
        "chat_template"
    ]


def without_template(config: dict[str, Any]) -> None:
    config.pop("chat_template", None)


@pytest.fixture(scope="module")
def base_chat_prompt() -> str:
    llm = make_llm(fixture_path("tiny-llama"))
    return llm.chat(CHAT, GREEDY, use_tqdm=False)[0].prompt


def test_bare_tokenizer_json_gets_special_tokens_from_config(tmp_path: Path) -> None:
    folder = derive_model("tiny-llama", tmp_path / "m", remove=TOKENIZER_FILES)
    assert load_tokenizer(str(folder)).eos_token is None  # what the folder alone says
    llm = make_llm(folder)
    tokenizer = llm.get_tokenizer()
    assert tokenizer.bos_token == "<|begin_of_text|>" and tokenizer.eos_token == "<|eot_id|>"
    base = load_tokenizer(str(fixture_path("tiny-llama")))
    assert tokenizer.encode("Hello world") == base.encode("Hello world")  # BOS still added
    out = llm.generate("Hello world", GREEDY, use_tqdm=False)[0]
    assert out.prompt_token_ids[0] == 0 and len(out.outputs[0].token_ids) == 4
    # No chat template anywhere: chat is refused clearly, plain prompts still work.
    with pytest.raises(InvalidRequestError, match="no chat template") as info:
        llm.chat(CHAT, GREEDY, use_tqdm=False)
    assert info.value.param == "chat_template"
    explicit = llm.chat(CHAT, GREEDY, use_tqdm=False, chat_template=base_template())[0]
    assert explicit.prompt.startswith("<|begin_of_text|>")  # bos_token rendered, not "None"


@pytest.mark.parametrize("form", ["jinja", "json", "json-named"])
def test_chat_template_in_its_own_file(tmp_path: Path, form: str, base_chat_prompt: str) -> None:
    template = base_template()
    files = {
        "jinja": {"chat_template.jinja": template},
        "json": {"chat_template.json": json.dumps({"chat_template": template})},
        "json-named": {
            "chat_template.json": json.dumps(
                {"chat_template": [{"name": "default", "template": template}]}
            )
        },
    }[form]
    folder = derive_model(
        "tiny-llama", tmp_path / "m", tokenizer_config=without_template, write=files
    )
    llm = make_llm(folder)
    assert llm.chat(CHAT, GREEDY, use_tqdm=False)[0].prompt == base_chat_prompt


def test_named_templates_pick_tool_use_when_tools_are_given(
    tmp_path: Path, base_chat_prompt: str
) -> None:
    tool_use = (
        "TOOLS:{{ tools | map(attribute='function.name') | join(',') }}|{{ messages[0].content }}"
    )

    def named(config: dict[str, Any]) -> None:
        config["chat_template"] = [
            {"name": "default", "template": config["chat_template"]},
            {"name": "tool_use", "template": tool_use},
        ]

    folder = derive_model("tiny-llama", tmp_path / "m", tokenizer_config=named)
    llm = make_llm(folder)
    assert llm.chat(CHAT, GREEDY, use_tqdm=False)[0].prompt == base_chat_prompt
    with_tools = llm.chat(CHAT, GREEDY, use_tqdm=False, tools=TOOLS)[0]
    assert with_tools.prompt == "TOOLS:get_weather|Hello there"


def test_sentencepiece_only_llama2_folder_matches_hf(tmp_path: Path) -> None:
    """tokenizer.model without tokenizer.json (Llama 2 era): converted via sentencepiece."""
    import transformers

    folder = tmp_path / "llama2"
    vocab = train_sentencepiece(folder)
    config = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.2,
    )
    config.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(config).eval()
    hf.save_pretrained(folder)
    assert not (folder / "tokenizer.json").exists()
    llm = make_llm(folder)
    tokenizer = llm.get_tokenizer()
    text = "Hello world, très bien 🙂"
    ids = tokenizer.encode(text)
    assert ids[0] == 1 and tokenizer.decode(ids, skip_special_tokens=True) == text
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    out = llm.generate(text, params, use_tqdm=False)[0].outputs[0]
    with torch.no_grad():
        expected = hf.generate(
            torch.tensor([ids]), max_new_tokens=8, do_sample=False, eos_token_id=None
        )[0, len(ids) :]
    assert list(out.token_ids) == expected.tolist()
    assert out.text == tokenizer.decode(expected, skip_special_tokens=True)


def _pad_rows(rows: int):
    def weights(state: StateDict) -> None:
        for name in ("model.embed_tokens.weight", "lm_head.weight"):
            extra = torch.randn(rows, state[name].shape[1]) * 0.02
            state[name] = torch.cat([state[name], extra])

    return weights


def test_added_tokens_beyond_the_base_vocab(tmp_path: Path) -> None:
    """Tokens added after training (a tool marker, a special token) sit past the base
    vocabulary, in embedding rows padded for them."""
    folder = derive_model(
        "tiny-llama",
        tmp_path / "m",
        config=lambda c: c.update(vocab_size=1280),
        weights=_pad_rows(1280 - 1267),
    )
    tokenizer = load_tokenizer(str(folder))
    assert tokenizer.add_tokens(["<tool_call>"]) == 1
    assert tokenizer.add_special_tokens({"additional_special_tokens": ["<|my_special|>"]}) == 1
    tokenizer.save_pretrained(folder)
    tool_id, special_id = tokenizer.convert_tokens_to_ids(["<tool_call>", "<|my_special|>"])
    assert (tool_id, special_id) == (1267, 1268)

    llm = make_llm(folder)
    prompt = llm.generate("say <tool_call> now", GREEDY, use_tqdm=False)[0]
    assert tool_id in prompt.prompt_token_ids
    forced = SamplingParams(
        temperature=0, max_tokens=2, ignore_eos=True, logit_bias={tool_id: 100.0}
    )
    text = llm.generate("Hi", forced, use_tqdm=False)[0].outputs[0]
    assert list(text.token_ids) == [tool_id, tool_id] and text.text == "<tool_call><tool_call>"
    special = SamplingParams(
        temperature=0, max_tokens=2, ignore_eos=True, logit_bias={special_id: 100.0}
    )
    hidden = llm.generate("Hi", special, use_tqdm=False)[0].outputs[0]
    assert list(hidden.token_ids) == [special_id] * 2 and hidden.text == ""
    shown = llm.generate("Hi", special.clone(skip_special_tokens=False), use_tqdm=False)[0]
    assert shown.outputs[0].text == "<|my_special|><|my_special|>"


def test_padded_embedding_rows_are_never_sampled(tmp_path: Path) -> None:
    """vocab_size 1300 in config.json, 1267 tokens: ids 1267..1299 cannot be decoded."""
    folder = derive_model(
        "tiny-llama",
        tmp_path / "m",
        config=lambda c: c.update(vocab_size=1300),
        weights=_pad_rows(1300 - 1267),
    )
    llm = make_llm(folder)
    assert llm.llm_engine.vocab_size == 1300
    assert decodable_vocab_size(llm.get_tokenizer()) == 1267
    # Even a request that pushes a padding id hard never gets it.
    pushed = SamplingParams(
        temperature=0, max_tokens=3, ignore_eos=True, logit_bias={1290: 100.0}, logprobs=2
    )
    out = llm.generate("Hi", pushed, use_tqdm=False)[0].outputs[0]
    assert all(t < 1267 for t in out.token_ids)
    assert all(t < 1267 for step in out.logprobs for t in step)
    sampled = SamplingParams(temperature=5.0, max_tokens=64, ignore_eos=True, seed=3)
    many = llm.generate(["a", "b", "c"], sampled, use_tqdm=False)
    assert all(t < 1267 for o in many for t in o.outputs[0].token_ids)


def test_eos_list_in_config_without_generation_config(tmp_path: Path) -> None:
    folder = derive_model(
        "tiny-llama",
        tmp_path / "m",
        config=lambda c: c.update(eos_token_id=[4, 7]),
        remove=("generation_config.json",),
    )
    llm = make_llm(folder)
    assert eos_token_ids(llm.llm_engine.model_config, llm.get_tokenizer()) == {4, 7}
    assert llm.llm_engine.get_default_sampling_params() == {}
    params = SamplingParams(temperature=0, max_tokens=10, logit_bias={7: 100.0})
    out = llm.generate("Hi", params, use_tqdm=False)[0].outputs[0]
    assert list(out.token_ids) == [7] and out.finish_reason == "stop"


def test_generation_config_sampling_defaults(tmp_path: Path) -> None:
    generation = {
        "eos_token_id": [4, 9],
        "max_new_tokens": 5,
        "repetition_penalty": 1.3,
        "top_k": 7,
        "temperature": 0.7,
        "do_sample": True,
    }
    folder = derive_model(
        "tiny-llama", tmp_path / "m", write={"generation_config.json": json.dumps(generation)}
    )
    llm = make_llm(folder)
    defaults = llm.get_default_sampling_params()
    assert (defaults.max_tokens, defaults.repetition_penalty, defaults.top_k) == (5, 1.3, 7)
    assert defaults.temperature == 0.7
    assert {4, 9} <= eos_token_ids(llm.llm_engine.model_config, llm.get_tokenizer())
    out = llm.generate("Hello", use_tqdm=False)[0].outputs[0]
    assert 1 <= len(out.token_ids) <= 5


@pytest.mark.parametrize(
    "text",
    [
        'Hello <tool_call>\n{"a": 1}</tool_call> done',
        "x<|my_special|> y <tool_call>z",
        "Grüße <tool_call>日本語</tool_call>",
    ],
)
@pytest.mark.parametrize("skip", [True, False])
def test_streamed_text_with_added_tokens_equals_decode(
    tmp_path: Path, text: str, skip: bool
) -> None:
    """A Hermes/Qwen `<tool_call>` marker is an added, non-special token: streaming must not
    pad it with spaces (tool parsers and clients see exactly what `decode` gives)."""
    from mono_llm.core.engine.detokenizer import IncrementalDetokenizer

    tokenizer = load_tokenizer(str(fixture_path("tiny-llama")))
    tokenizer.add_tokens(["<tool_call>", "</tool_call>"])
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|my_special|>"]})
    ids = tokenizer.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(
        tokenizer, tokenizer.encode("Say:"), SamplingParams(skip_special_tokens=skip)
    )
    for token_id in ids:
        detok.update([token_id])
    detok.flush()
    assert detok.output_text == tokenizer.decode(ids, skip_special_tokens=skip)
