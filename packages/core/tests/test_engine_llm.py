"""The offline LLM end to end on tiny-llama: n/best_of, seeds, stops, aborts, validation."""

from __future__ import annotations

import functools

import pytest
import torch

from mono_llm.core import (
    LLM,
    EngineOverloadedError,
    InvalidRequestError,
    PromptTooLongError,
    SamplingParams,
)
from mono_llm.core.engine.core import EngineCore
from mono_llm.core.testing import fixture_path

NUM_BLOCKS = 64


@functools.cache
def _llm() -> LLM:
    return LLM(
        str(fixture_path("tiny-llama")),
        max_model_len=128,
        num_gpu_blocks_override=NUM_BLOCKS,
        seed=0,
    )


def _engine() -> EngineCore:
    return _llm().llm_engine


PROMPT = {"prompt_token_ids": [0, 300, 301, 302, 303, 304, 305, 306, 307]}


def test_text_matches_full_decode_and_stats() -> None:
    llm = _llm()
    out = llm.generate(["hello there", "Grüße 日本"], SamplingParams(temperature=0, max_tokens=24))
    tok = llm.get_tokenizer()
    for o in out:
        c = o.outputs[0]
        assert c.text == tok.decode(c.token_ids, skip_special_tokens=True)
        assert o.prompt_token_ids == tok.encode(o.prompt)
        assert o.metrics.first_token_time >= o.metrics.arrival_time
        assert o.metrics.finished_time is not None
    assert _engine().kv_cache.num_free_blocks == NUM_BLOCKS
    assert _engine().get_stats().kv_cache_usage == 0.0


def test_n_and_best_of() -> None:
    params = SamplingParams(n=3, temperature=1.0, seed=5, max_tokens=12, ignore_eos=True)
    out = _llm().generate([PROMPT], params)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in out.outputs}) == 3  # different candidates
    assert all(len(c.token_ids) == 12 for c in out.outputs)
    # Candidates 1 and 2 reused the prompt's full block computed by candidate 0.
    assert _engine().kv_cache.num_free_blocks == NUM_BLOCKS

    best = SamplingParams(n=2, best_of=4, temperature=1.0, seed=5, max_tokens=8, ignore_eos=True)
    out = _llm().generate([PROMPT], best)[0]
    assert len(out.outputs) == 2
    assert out.outputs[0].cumulative_logprob is None  # logprobs not asked for
    ranked = _llm().generate([PROMPT], best.clone(logprobs=0))[0].outputs
    assert ranked[0].cumulative_logprob >= ranked[1].cumulative_logprob


def test_seeded_requests_reproducible_regardless_of_batch() -> None:
    params = SamplingParams(temperature=1.0, top_p=0.95, seed=42, max_tokens=16, ignore_eos=True)
    alone = _llm().generate([PROMPT], params)[0].outputs[0].token_ids
    noise = SamplingParams(temperature=1.0, max_tokens=20, ignore_eos=True)
    others = [{"prompt_token_ids": [0, 9, 10 + i, 11]} for i in range(5)]
    batch = _llm().generate(
        [*others[:2], PROMPT, *others[2:]], [noise, noise, params, noise, noise, noise]
    )
    assert batch[2].outputs[0].token_ids == alone
    other_seed = _llm().generate([PROMPT], params.clone(seed=43))[0].outputs[0].token_ids
    assert other_seed != alone


def test_stop_strings_and_stop_tokens() -> None:
    llm = _llm()
    base = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    reference = llm.generate([PROMPT], base)[0].outputs[0]
    text = reference.text
    assert len(text) > 12
    stop = text[5:9]  # most likely spans a token boundary; either way it must cut there
    cut = llm.generate([PROMPT], base.clone(stop=[stop]))[0].outputs[0]
    assert cut.text == text[: text.index(stop)]
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    kept = llm.generate([PROMPT], base.clone(stop=[stop], include_stop_str_in_output=True))
    assert kept[0].outputs[0].text == text[: text.index(stop) + len(stop)]
    stop_token = reference.token_ids[3]
    by_token = llm.generate([PROMPT], base.clone(stop_token_ids=[stop_token]))[0].outputs[0]
    first = reference.token_ids.index(stop_token)
    assert by_token.token_ids == reference.token_ids[: first + 1]
    assert by_token.stop_reason == stop_token and by_token.finish_reason == "stop"


def test_eos_and_min_tokens() -> None:
    llm = _llm()
    eos = sorted(_engine().eos_token_ids)
    assert eos == [1, 4]  # generation_config.json's list
    # Make EOS the argmax via logit_bias: it stops at once, or only after min_tokens.
    bias = SamplingParams(temperature=0, max_tokens=10, logit_bias={4: 100.0})
    out = llm.generate([PROMPT], bias)[0].outputs[0]
    assert out.token_ids == [4] and out.finish_reason == "stop" and out.stop_reason is None
    out = llm.generate([PROMPT], bias.clone(min_tokens=3))[0].outputs[0]
    assert len(out.token_ids) == 4 and out.token_ids[-1] == 4
    out = llm.generate([PROMPT], bias.clone(ignore_eos=True))[0].outputs[0]
    assert out.token_ids == [4] * 10 and out.finish_reason == "length"


def test_prompt_logprobs_match_hf() -> None:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        fixture_path("tiny-llama"), dtype=torch.float32
    ).eval()
    ids = PROMPT["prompt_token_ids"]
    with torch.no_grad():
        reference = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)
    out = _llm().generate([PROMPT], SamplingParams(max_tokens=1, prompt_logprobs=2))[0]
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(ids)
    for position, entry in enumerate(out.prompt_logprobs[1:]):
        token = ids[position + 1]
        assert entry[token].logprob == pytest.approx(reference[position, token].item(), abs=1e-4)
        top2 = reference[position].topk(2).indices.tolist()
        assert set(top2) <= set(entry)


def test_abort_mid_generation_frees_all_blocks() -> None:
    engine = _engine()
    start = engine.kv_cache.num_free_blocks
    params = SamplingParams(temperature=0, max_tokens=100, ignore_eos=True)
    engine.add_request("long-1", PROMPT, params)
    engine.add_request("long-2", {"prompt_token_ids": list(range(10, 60))}, params.clone(n=2))
    for _ in range(5):
        engine.step()
    assert engine.kv_cache.num_free_blocks < start
    outs = engine.abort_request(["long-1", "long-2"])
    assert {o.request_id for o in outs} == {"long-1", "long-2"}
    assert all(c.finish_reason == "abort" for o in outs for c in o.outputs)
    assert engine.kv_cache.num_free_blocks == start
    assert not engine.has_unfinished_requests() and engine.get_stats().num_running_reqs == 0


def test_validation_errors() -> None:
    llm = _llm()
    with pytest.raises(PromptTooLongError) as info:
        llm.generate([{"prompt_token_ids": [5] * 128}])
    assert info.value.max_model_len == 128 and info.value.num_prompt_tokens == 128
    with pytest.raises(InvalidRequestError) as info:
        llm.generate([PROMPT], SamplingParams(logprobs=21))
    assert info.value.param == "logprobs"
    with pytest.raises(InvalidRequestError) as info:
        llm.generate([PROMPT], SamplingParams(logit_bias={99999: 1.0}))
    assert info.value.param == "logit_bias"
    with pytest.raises(InvalidRequestError):
        llm.generate([{"prompt_token_ids": []}])
    assert not _engine().has_unfinished_requests()


def test_waiting_queue_bound() -> None:
    llm = LLM(
        str(fixture_path("tiny-llama")),
        max_model_len=64,
        num_gpu_blocks_override=16,
        max_waiting_requests=2,
    )
    engine = llm.llm_engine
    engine.add_request("a", PROMPT)
    engine.add_request("b", PROMPT)
    with pytest.raises(EngineOverloadedError):
        engine.add_request("c", PROMPT)
    engine.step()  # both admitted: the queue has room again
    engine.add_request("c", PROMPT)


def test_generation_config_defaults_and_chat() -> None:
    llm = _llm()
    assert _engine().get_default_sampling_params() == {"temperature": 0.6, "top_p": 0.9}
    default = llm.get_default_sampling_params()
    assert default.temperature == 0.6 and default.top_p == 0.9
    vllm_mode = LLM(
        str(fixture_path("tiny-llama")),
        max_model_len=64,
        num_gpu_blocks_override=8,
        generation_config="vllm",
    )
    assert vllm_mode.llm_engine.get_default_sampling_params() == {}
    out = llm.chat(
        [{"role": "user", "content": "hi"}], SamplingParams(temperature=0, max_tokens=4)
    )[0]
    assert out.prompt.startswith("<|begin_of_text|>")
    assert out.prompt_token_ids.count(0) == 1  # BOS from the template only, not doubled


def test_bad_words() -> None:
    llm = _llm()
    base = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    reference = llm.generate([PROMPT], base)[0].outputs[0]
    word = llm.get_tokenizer().decode(reference.token_ids[2:4]).strip()
    assert word
    banned = llm.generate([PROMPT], base.clone(bad_words=[word]))[0].outputs[0]
    assert banned.token_ids[:2] == reference.token_ids[:2]
    assert banned.token_ids != reference.token_ids


def test_context_capped_by_a_small_kv_cache() -> None:
    small = LLM(str(fixture_path("tiny-llama")), max_model_len=128, num_gpu_blocks_override=2)
    assert small.llm_engine.max_seq_len == 32  # 2 blocks of 16 tokens
    with pytest.raises(PromptTooLongError):
        small.generate([{"prompt_token_ids": [7] * 40}])
    params = SamplingParams(temperature=0, max_tokens=None, ignore_eos=True)
    out = small.generate([{"prompt_token_ids": [7] * 10}], params)[0].outputs[0]
    assert len(out.token_ids) == 22 and out.finish_reason == "length"


def test_n_shares_prompt_blocks_without_prefix_cache() -> None:
    prompt = {"prompt_token_ids": list(range(100, 140))}  # 40 tokens: 2 full blocks + 8
    params = SamplingParams(n=3, temperature=1.0, seed=11, max_tokens=6, ignore_eos=True)
    no_cache = LLM(
        str(fixture_path("tiny-llama")),
        max_model_len=128,
        num_gpu_blocks_override=32,
        enable_prefix_caching=False,
    )
    engine = no_cache.llm_engine
    engine.add_request("r", prompt, params)
    engine.step()  # the first candidate computes the prompt (3 blocks)
    engine.step()  # the others take its 2 full prompt blocks, recompute only the last 8 tokens
    assert engine.kv_cache.num_free_blocks == 32 - 3 - 2 * 1
    while engine.has_unfinished_requests():
        engine.step()
    assert engine.kv_cache.num_free_blocks == 32
    shared = no_cache.generate([prompt], params)[0].outputs
    cached = _llm().generate([prompt], params)[0].outputs
    assert [c.token_ids for c in shared] == [c.token_ids for c in cached]
