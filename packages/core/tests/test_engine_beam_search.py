"""Beam search (`LLM.beam_search`) against Hugging Face's `generate(num_beams=...)` on the
same fixture weights: the same hypotheses, in the same order."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from mono_llm.core import LLM, BeamSearchParams
from mono_llm.core.testing import fixture_path

MODEL = "tiny-llama"


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(str(fixture_path(MODEL)), max_model_len=128, num_gpu_blocks_override=128)


@pytest.mark.parametrize("width", [1, 3])
def test_beams_equal_hugging_face(llm, width) -> None:
    hf = AutoModelForCausalLM.from_pretrained(fixture_path(MODEL), dtype=torch.float32)
    tokenizer = llm.get_tokenizer()
    prompt = "The quick brown fox"
    input_ids = tokenizer(prompt, return_tensors="pt").input_ids
    expected = hf.generate(
        input_ids,
        num_beams=width,
        num_return_sequences=width,
        max_new_tokens=6,
        do_sample=False,
        length_penalty=1.0,
        early_stopping=False,
        pad_token_id=tokenizer.eos_token_id,
    )[:, input_ids.shape[1] :].tolist()
    (output,) = llm.beam_search([prompt], BeamSearchParams(beam_width=width, max_tokens=6))
    got = [s.output_tokens for s in output.sequences]
    assert got == expected
    assert output.sequences[0].tokens[: input_ids.shape[1]] == input_ids[0].tolist()
    scores = [s.cum_logprob for s in output.sequences]
    assert scores == sorted(scores, reverse=True)
    assert output.sequences[0].text == tokenizer.decode(got[0], skip_special_tokens=True)


def test_beam_search_reaches_beyond_greedy(llm) -> None:
    """The best beam's log-probability is at least the greedy sequence's."""
    from mono_llm.core import SamplingParams

    greedy = llm.generate(
        ["Once upon"], SamplingParams(max_tokens=5, temperature=0, logprobs=0), use_tqdm=False
    )[0].outputs[0]
    (beams,) = llm.beam_search(["Once upon"], BeamSearchParams(beam_width=4, max_tokens=5))
    assert beams.sequences[0].cum_logprob >= greedy.cumulative_logprob - 1e-4
    assert len(beams.sequences) == 4


def test_prompts_in_lockstep_equal_one_at_a_time(llm) -> None:
    params = BeamSearchParams(beam_width=2, max_tokens=4)
    prompts = ["The quick brown fox", {"prompt_token_ids": [5, 6, 7]}]
    together = llm.beam_search(prompts, params)
    alone = [llm.beam_search([p], params)[0] for p in prompts]
    assert [[s.tokens for s in o.sequences] for o in together] == [
        [s.tokens for s in o.sequences] for o in alone
    ]
