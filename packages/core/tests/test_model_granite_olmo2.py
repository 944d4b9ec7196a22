"""Granite 3 and OLMo 2 as switches of the Llama family, beyond the shared parity lists.

Each Granite multiplier changes the reference's logits on its own (so the fixture can catch a
missing or misplaced one) and the runner follows the reference whichever is reset to 1; a
config.json without `architectures` loads by model_type; Granite splits over two tensor-
parallel ranks like Llama, while OLMo 2's whole-projection q/k norms make it refuse a split
before any worker starts. The parity, inputs_embeds and CUDA-graph runs are in the shared
fixture lists of test_model_parity.py, test_engine_parity.py and friends.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import torch

from mono_llm.core import LLM, EngineArgs, SamplingParams
from mono_llm.core.errors import ParallelConfigError
from mono_llm.core.testing import fixture_path
from mono_llm.core.testing.variants import derive_model
from mono_llm.core.worker.batch import LogitsWanted, ModelBatch, SequenceSlice
from mono_llm.core.worker.model_runner import ModelRunner

PROMPT = [(i * 37 + 11) % 1200 + 5 for i in range(40)]
GRANITE_MULTIPLIERS = (
    "embedding_multiplier",
    "residual_multiplier",
    "attention_multiplier",
    "logits_scaling",
)


def hf_logits(folder: Path, prompt: list[int]) -> torch.Tensor:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        return model(torch.tensor([prompt])).logits[0].float()


def runner_logits(folder: Path, prompt: list[int], dtype: str = "float32") -> torch.Tensor:
    """Every row's logits, in two chunks (the second attends over the cached first)."""
    args = EngineArgs(
        model=str(folder), device="cpu", dtype=dtype, max_num_seqs=2, max_model_len=128,
        kv_cache_memory_gib=0.01,
    )  # fmt: skip
    runner = ModelRunner(args.create_engine_config())
    table = list(range(-(-len(prompt) // runner.block_size)))
    half = len(prompt) // 2
    first = runner.execute(ModelBatch([SequenceSlice(prompt[:half], 0, table, LogitsWanted.ALL)]))
    second = runner.execute(
        ModelBatch([SequenceSlice(prompt[half:], half, table, LogitsWanted.ALL)])
    )
    return torch.cat([first, second])


@functools.cache
def granite_reference() -> torch.Tensor:
    return hf_logits(fixture_path("tiny-granite"), PROMPT)


@pytest.mark.parametrize("key", GRANITE_MULTIPLIERS)
def test_each_granite_multiplier_bites_and_is_followed(key: str, tmp_path: Path) -> None:
    folder = derive_model("tiny-granite", tmp_path / "m", config=lambda c: c.update({key: 1.0}))
    expected = hf_logits(folder, PROMPT)
    # The fixture's value of this multiplier changes the reference's logits by far more than
    # the parity tolerance, so an implementation that drops it fails the fixture's tests.
    assert (expected - granite_reference()).abs().max().item() > 0.1
    torch.testing.assert_close(runner_logits(folder, PROMPT), expected, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["tiny-granite", "tiny-olmo2"])
def test_config_without_architectures_loads_by_model_type(name: str, tmp_path: Path) -> None:
    folder = derive_model(name, tmp_path / "m", config=lambda c: c.pop("architectures"))
    config = EngineArgs(model=str(folder), device="cpu").create_engine_config()
    assert config.model_config.architectures == [
        "GraniteForCausalLM" if name == "tiny-granite" else "Olmo2ForCausalLM"
    ]
    torch.testing.assert_close(
        runner_logits(folder, PROMPT), hf_logits(fixture_path(name), PROMPT), atol=2e-4, rtol=1e-4
    )


@pytest.mark.parametrize("name", ["tiny-granite", "tiny-olmo2"])
def test_bfloat16_tracks_float32(name: str) -> None:
    folder = fixture_path(name)
    exact = runner_logits(folder, PROMPT)
    half = runner_logits(folder, PROMPT, dtype="bfloat16")
    assert half.dtype == torch.float32
    # bf16 keeps ~3 significant digits; the top token agrees where float32's margin is clear.
    margin = exact.topk(2, dim=-1).values
    clear = (margin[:, 0] - margin[:, 1]) > 0.3
    assert clear.any()
    assert torch.equal(half.argmax(-1)[clear], exact.argmax(-1)[clear])
    assert (half - exact).abs().max().item() < 0.25


def _tp_llm(model: Path, tp: int) -> LLM:
    return LLM(
        str(model),
        max_model_len=128,
        num_gpu_blocks_override=64,
        max_num_batched_tokens=32,
        tensor_parallel_size=tp,
    )


def test_tp2_granite_equals_tp1(tmp_path: Path) -> None:
    """Granite's multipliers on each rank's partial sums (the all-reduce comes first: the
    multiply is applied to the row-parallel output). The vocabulary is padded by one row so
    that two ranks divide it."""

    def pad_vocab(state: dict[str, Any]) -> None:
        for key in ("model.embed_tokens.weight", "lm_head.weight"):
            state[key] = torch.cat([state[key], state[key][:1]])

    granite = derive_model(
        "tiny-granite",
        tmp_path / "granite",
        config=lambda c: c.update(vocab_size=c["vocab_size"] + 1),
        weights=pad_vocab,
    )
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=5)
    prompts = ["hello there", {"prompt_token_ids": PROMPT[:20]}]
    expected = _tp_llm(granite, 1).generate(prompts, params)
    split = _tp_llm(granite, 2)
    assert split.llm_engine.model_runner.tensor_parallel_size == 2
    for ref, out in zip(expected, split.generate(prompts, params), strict=True):
        a, b = ref.outputs[0], out.outputs[0]
        assert b.token_ids == a.token_ids
        for step_a, step_b in zip(a.logprobs, b.logprobs, strict=True):
            assert list(step_b) == list(step_a)
            for token, lp in step_a.items():
                assert step_b[token].logprob == pytest.approx(lp.logprob, abs=1e-4)


def test_olmo2_tensor_parallel_is_refused_at_config_time() -> None:
    with pytest.raises(ParallelConfigError, match="Olmo2ForCausalLM") as caught:
        EngineArgs(
            model=str(fixture_path("tiny-olmo2")), device="cpu", tensor_parallel_size=2
        ).create_engine_config()
    assert "GraniteForCausalLM" in str(caught.value)  # the message lists what can split


@pytest.mark.parametrize("name", ["tiny-granite", "tiny-olmo2"])
def test_through_the_triton_kernels_matches_hf(name: str) -> None:
    """The CPU runs take the kernels' torch references; this forces every op through its
    Triton kernel (the interpreter on CPU): OLMo 2's norms over whole q/k projections and on
    sub-block outputs, Granite's scaled residual adds and attention scale."""
    from mono_llm import kernels
    from mono_llm.kernels.backend import triton_can_run

    if not triton_can_run("cpu"):
        pytest.skip("Triton cannot run on CPU here (TRITON_INTERPRET is not 1)")
    folder = fixture_path(name)
    prompt = PROMPT[:24]
    with kernels.use_backend("triton"):
        got = runner_logits(folder, prompt)
    torch.testing.assert_close(got, hf_logits(folder, prompt), atol=2e-4, rtol=1e-4)


TEXTS = ["a short one", "the quick brown fox jumps over the lazy dog"]


def test_olmo2_classifier_and_granite_embedder_match_transformers(tmp_path: Path) -> None:
    """The switches reach the pooling heads: an Olmo2ForSequenceClassification made from
    tiny-olmo2 with a random `score` head, and tiny-granite as a last-token embedder (its
    body scales the embeddings and the residual adds, as transformers' GraniteModel)."""
    import transformers

    def add_score(state: dict[str, Any]) -> None:
        state["score.weight"] = torch.randn(2, 64, generator=torch.Generator().manual_seed(0))

    def as_classifier(config: dict[str, Any]) -> None:
        config.update(architectures=["Olmo2ForSequenceClassification"])
        config.update(id2label={"0": "bad", "1": "good"}, label2id={"bad": 0, "good": 1})

    path = derive_model("tiny-olmo2", tmp_path / "cls", config=as_classifier, weights=add_score)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(
        path, attn_implementation="eager"
    ).eval()
    outputs = LLM(str(path)).classify(TEXTS)
    for text, out in zip(TEXTS, outputs, strict=True):
        with torch.no_grad():
            probs = hf(**tokenizer(text, return_tensors="pt")).logits[0].softmax(-1)
        assert out.outputs.probs == pytest.approx(probs.tolist(), abs=1e-5)

    base = fixture_path("tiny-granite")
    tokenizer = transformers.AutoTokenizer.from_pretrained(base)
    body = transformers.AutoModel.from_pretrained(base, attn_implementation="eager").eval()
    for text, result in zip(TEXTS, LLM(str(base), task="embed").embed(TEXTS), strict=True):
        with torch.no_grad():
            hidden = body(**tokenizer(text, return_tensors="pt")).last_hidden_state[0, -1]
        expected = torch.nn.functional.normalize(hidden, dim=0)
        assert result.outputs.embedding == pytest.approx(expected.tolist(), abs=1e-4)
