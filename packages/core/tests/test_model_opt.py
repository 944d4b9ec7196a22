"""OPT against HF transformers on the same weights (float32, CPU): every config switch the
published checkpoints use, both checkpoint namings, the tokenizer's BOS, and what the model
refuses. The tiny-opt fixtures also run in test_model_parity.py, test_engine_parity.py and
test_model_inputs_embeds.py."""

from __future__ import annotations

import functools
import gc
from pathlib import Path
from typing import Any

import pytest
import torch

from mono_llm.core import LLM, EngineArgs, SamplingParams
from mono_llm.core.errors import UnsupportedModelError
from mono_llm.core.testing import fixture_path
from mono_llm.core.testing.opt import OPT_BOS_ID, build_opt
from mono_llm.core.testing.parity import chunked_runner_logits as runner_logits
from mono_llm.core.testing.parity import hf_logits, random_prompt
from mono_llm.core.testing.variants import derive_model
from mono_llm.core.worker.batch import LogitsWanted, ModelBatch, SequenceSlice
from mono_llm.core.worker.model_runner import ModelRunner

ATOL = 2e-4

# (fixture the variant starts from, OPTConfig fields changed)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "no-bias": ("tiny-opt", {"enable_bias": False}),
    "layer-norm-without-affine": ("tiny-opt", {"layer_norm_elementwise_affine": False}),
    "final-layer-norm-removed": ("tiny-opt", {"_remove_final_layer_norm": True}),
    "untied-lm-head-gelu": (
        "tiny-opt",
        {"tie_word_embeddings": False, "activation_function": "gelu"},
    ),
    "pre-ln-projected": ("tiny-opt", {"word_embed_proj_dim": 32}),
    "post-ln-unprojected": ("tiny-opt-post-ln", {"word_embed_proj_dim": 64}),
}


def prompt_ids(length: int = 90, vocab: int = 1200) -> list[int]:
    return random_prompt(length, vocab)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_config_variant_matches_hf(variant: str, tmp_path: Path) -> None:
    base, overrides = VARIANTS[variant]
    build_opt(base, tmp_path, **overrides)
    prompt = prompt_ids()
    expected = hf_logits(tmp_path, prompt)
    got = runner_logits(tmp_path, prompt)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-4)
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_bare_decoder_names_in_a_pytorch_bin_load(tmp_path: Path) -> None:
    """opt-125m's pytorch_model.bin: `decoder.*` without `model.`, no lm_head (tied)."""

    def bare(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k.removeprefix("model."): v for k, v in state.items() if k != "lm_head.weight"}

    folder = derive_model("tiny-opt-post-ln", tmp_path / "bare", weights=bare, weight_format="bin")
    assert not list(folder.glob("*.safetensors"))
    prompt = prompt_ids(40)
    expected = hf_logits(fixture_path("tiny-opt-post-ln"), prompt)
    torch.testing.assert_close(runner_logits(folder, prompt), expected, atol=ATOL, rtol=1e-4)


def test_checkpoint_with_an_lm_head_copy_loads_tied(tmp_path: Path) -> None:
    """Exports that also write `lm_head.weight` for a tied model load the same model."""

    def with_head(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {**state, "lm_head.weight": state["model.decoder.embed_tokens.weight"].clone()}

    folder = derive_model("tiny-opt", tmp_path / "head", weights=with_head)
    prompt = prompt_ids(20)
    expected = hf_logits(fixture_path("tiny-opt"), prompt)
    torch.testing.assert_close(runner_logits(folder, prompt), expected, atol=ATOL, rtol=1e-4)


def test_final_layer_norm_tensors_of_a_post_ln_config_are_ignored(tmp_path: Path) -> None:
    """As transformers does: a checkpoint that carries a final LayerNorm the config does not
    build (post-LN, or `_remove_final_layer_norm`) loads, and the tensor has no effect."""

    def with_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            **state,
            "model.decoder.final_layer_norm.weight": torch.full((64,), 3.0),
            "model.decoder.final_layer_norm.bias": torch.full((64,), 0.5),
        }

    folder = derive_model("tiny-opt-post-ln", tmp_path / "extra", weights=with_norm)
    prompt = prompt_ids(20)
    expected = hf_logits(fixture_path("tiny-opt-post-ln"), prompt)
    torch.testing.assert_close(runner_logits(folder, prompt), expected, atol=ATOL, rtol=1e-4)


def test_bfloat16_tracks_float32() -> None:
    prompt = prompt_ids(60)
    expected = hf_logits(fixture_path("tiny-opt-post-ln"), prompt)
    got = runner_logits(fixture_path("tiny-opt-post-ln"), prompt, dtype="bfloat16")
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert (got - expected).abs().max() < 0.25 * expected.std()
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() > 0.9


def test_missing_layer_weight_is_named(tmp_path: Path) -> None:
    def drop(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v for k, v in state.items() if "layers.1.fc2.weight" not in k}

    folder = derive_model("tiny-opt", tmp_path / "partial", weights=drop)
    with pytest.raises(UnsupportedModelError, match=r"layers\.1\.fc2\.weight"):
        runner_logits(folder, [2, 5, 6])


@functools.cache
def _quickstart(name: str) -> tuple[list, list[list[int]]]:
    """vLLM's quickstart on the fixture, and HF generate's greedy tokens for the same prompts."""
    import transformers

    prompts = ["Hello, my name is", "The capital of France is", "The future of AI is"]
    llm = LLM(model=str(fixture_path(name)), seed=0, max_model_len=256)
    outputs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=24, ignore_eos=True))
    tokenizer = transformers.AutoTokenizer.from_pretrained(fixture_path(name))
    model = transformers.AutoModelForCausalLM.from_pretrained(
        fixture_path(name), dtype=torch.float32
    ).eval()
    model.generation_config = transformers.GenerationConfig(
        do_sample=False, max_new_tokens=24, pad_token_id=1
    )
    expected = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            expected.append(model.generate(ids)[0, ids.shape[1] :].tolist())
    return outputs, expected


@pytest.mark.parametrize("name", ["tiny-opt", "tiny-opt-post-ln"])
def test_quickstart_text_prompts_match_hf_generate(name: str) -> None:
    outputs, expected = _quickstart(name)
    for out, hf_tokens in zip(outputs, expected, strict=True):
        assert out.prompt_token_ids[0] == OPT_BOS_ID  # `</s>` prepended, as OPT's tokenizer does
        assert OPT_BOS_ID not in out.prompt_token_ids[1:]
        assert out.outputs[0].token_ids == hf_tokens
        assert isinstance(out.outputs[0].text, str) and out.outputs[0].text


def test_embedding_rows_past_the_tokenizer_are_read_but_never_sampled() -> None:
    """OPT's embedding has more rows than its tokenizer has tokens (50272 vs 50265); the
    fixture pads the same way. Prompt ids in the padding embed like any other; sampling
    stays within the ids the tokenizer can decode."""
    folder = fixture_path("tiny-opt")
    llm = LLM(model=str(folder), seed=0, max_model_len=256)
    vocab = llm.llm_engine.model_config.hf_config["vocab_size"]
    tokenizer_size = len(llm.get_tokenizer())
    assert vocab > tokenizer_size
    params = SamplingParams(temperature=1.5, max_tokens=64, ignore_eos=True, seed=1)
    prompt = [OPT_BOS_ID, vocab - 1, tokenizer_size, 50]
    out = llm.generate([{"prompt_token_ids": prompt}], params)[0].outputs[0]
    assert len(out.token_ids) == 64
    assert max(out.token_ids) < tokenizer_size
    assert isinstance(out.text, str) and out.text


def test_context_longer_than_the_learned_positions_is_refused() -> None:
    from mono_llm.core.models.opt import OPTForCausalLM

    folder = fixture_path("tiny-opt")
    with pytest.raises(ValueError, match="max_model_len"):
        EngineArgs(model=str(folder), max_model_len=2048).create_engine_config()
    config = EngineArgs(model=str(folder)).create_engine_config().model_config
    assert config.max_model_len == 1024  # max_position_embeddings is the context window
    with torch.device("meta"), pytest.raises(UnsupportedModelError, match="1024"):
        OPTForCausalLM.from_hf_config(config.hf_config, "OPTForCausalLM", max_model_len=1025)


def test_unknown_activation_is_refused(tmp_path: Path) -> None:
    folder = derive_model(
        "tiny-opt", tmp_path / "act", config=lambda c: c.update(activation_function="mish")
    )
    with pytest.raises(UnsupportedModelError, match="mish"):
        runner_logits(folder, [2, 5, 6])


def test_tensor_parallel_2_equals_one_device() -> None:
    """Two gloo ranks on CPU: heads, fc1 rows and fc2 columns split, the tied embedding and
    lm_head split over the vocabulary, project_in/out and positions replicated."""
    prompts = ["the quick brown fox jumps over", {"prompt_token_ids": [2, *range(300, 320)]}]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=3)

    def run(tp: int) -> list:
        llm = LLM(
            str(fixture_path("tiny-opt-post-ln")),
            max_model_len=128,
            num_gpu_blocks_override=64,
            max_num_batched_tokens=16,  # chunked prefill mixed with decodes
            tensor_parallel_size=tp,
        )
        assert getattr(llm.llm_engine.model_runner, "tensor_parallel_size", 1) == tp
        return llm.generate(prompts, params)

    single, split = run(1), run(2)
    for a, b in zip(single, split, strict=True):
        assert b.outputs[0].token_ids == a.outputs[0].token_ids
        for step_a, step_b in zip(a.outputs[0].logprobs, b.outputs[0].logprobs, strict=True):
            assert list(step_b) == list(step_a)
            for token, lp in step_a.items():
                assert step_b[token].logprob == pytest.approx(lp.logprob, abs=1e-4)


# The shape fields of published facebook/opt-* config.json files (the rest are OPTConfig
# defaults there too): widths, depth, heads, the 350m's narrower embedding and post-LN.
PUBLISHED_SHAPES: dict[str, dict[str, Any]] = {
    "opt-125m": {"hidden_size": 768, "ffn_dim": 3072, "num_hidden_layers": 12,
                 "num_attention_heads": 12, "word_embed_proj_dim": 768},
    "opt-350m": {"hidden_size": 1024, "ffn_dim": 4096, "num_hidden_layers": 24,
                 "num_attention_heads": 16, "word_embed_proj_dim": 512,
                 "do_layer_norm_before": False},
    "opt-1.3b": {"hidden_size": 2048, "ffn_dim": 8192, "num_hidden_layers": 24,
                 "num_attention_heads": 32, "word_embed_proj_dim": 2048},
    "opt-2.7b": {"hidden_size": 2560, "ffn_dim": 10240, "num_hidden_layers": 32,
                 "num_attention_heads": 32, "word_embed_proj_dim": 2560},
    "opt-6.7b": {"hidden_size": 4096, "ffn_dim": 16384, "num_hidden_layers": 32,
                 "num_attention_heads": 32, "word_embed_proj_dim": 4096},
}  # fmt: skip


@pytest.mark.parametrize("shape", sorted(PUBLISHED_SHAPES))
@pytest.mark.parametrize("naming", ["model.decoder", "decoder"])
def test_published_shapes_load_every_hf_tensor_exactly(shape: str, naming: str) -> None:
    """On the meta device (shapes only, no memory): transformers' OPTForCausalLM state dict
    of each published size, named as its safetensors (`model.decoder.*`) or as opt-125m's
    bin (`decoder.*`), fills every parameter of ours once, with matching shapes."""
    import transformers

    from mono_llm.core.models.loader import mapped_weights
    from mono_llm.core.models.opt import OPTForCausalLM
    from mono_llm.core.models.registry import resolve_spec

    fields = {"vocab_size": 50272, "max_position_embeddings": 2048, **PUBLISHED_SHAPES[shape]}
    config = transformers.OPTConfig(**fields)
    with torch.device("meta"):
        hf = transformers.OPTForCausalLM(config)
        ours = OPTForCausalLM.from_hf_config(config.to_dict(), "OPTForCausalLM", 2048)
    state = hf.state_dict()
    if naming == "decoder":  # opt-125m's pytorch_model.bin: bare body, no lm_head
        state = {k.removeprefix("model."): v for k, v in state.items() if k != "lm_head.weight"}
    assert any(k.startswith(f"{naming}.layers.") for k in state)
    spec = resolve_spec(["OPTForCausalLM"])
    loaded = ours.load_weights(mapped_weights(iter(state.items()), spec.weights))
    assert loaded == ours.expected_weights()
    hf_params = sum(p.numel() for p in hf.parameters())
    assert sum(p.numel() for p in ours.parameters()) == hf_params
    decoder = ours.model.decoder
    assert (decoder.project_in is not None) == (shape == "opt-350m")
    assert (decoder.final_layer_norm is None) == (shape == "opt-350m")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("shape", ["opt-125m", "opt-350m", "opt-2.7b"])
def test_published_shapes_graphed_on_cuda_equal_eager(shape: str, tmp_path: Path) -> None:
    """Dummy weights of a published size (opt-350m: post-LN and project_in/out; opt-2.7b:
    head_dim 80) on the GPU: decode CUDA graphs (and prefill graphs) give the eager logits,
    up to the last learned position (2047)."""
    fields = {"vocab_size": 50272, "max_position_embeddings": 2048, **PUBLISHED_SHAPES[shape]}
    folder = derive_model(
        "tiny-opt",
        tmp_path / shape,
        config=lambda c: c.update(fields),
        remove=("model.safetensors",),
    )

    def cuda_runner(eager: bool) -> ModelRunner:
        args = EngineArgs(
            model=str(folder), device="cuda", dtype="float32", load_format="dummy",
            max_num_seqs=8, max_model_len=2048, max_num_batched_tokens=2048,
            gpu_memory_utilization=0.4, enforce_eager=eager,
            cuda_graph_max_prefill_tokens=0 if eager else 64,
        )  # fmt: skip
        return ModelRunner(args.create_engine_config())

    def session(runner: ModelRunner) -> list[torch.Tensor]:
        """A 2041-token prefill alone (eager: no graph that large), two short prompts
        together (the 64-token prefill graph), 7 decode steps of fixed tokens for the three
        (the 4-sequence decode graph; the long one reaches position 2047, the table's last
        row), then a 10-token prefill (the 16-token graph). Returns every step's logits."""
        gen = torch.Generator().manual_seed(0)
        prompts = [torch.randint(3, 50000, (n,), generator=gen).tolist() for n in (2041, 7, 33)]
        tables, next_block = [], 0
        for p in prompts:
            count = -(-(len(p) + 7) // runner.block_size)
            tables.append(list(range(next_block, next_block + count)))
            next_block += count
        slices = [SequenceSlice(p, 0, t, LogitsWanted.LAST) for p, t in zip(prompts, tables)]
        out = [runner.execute(ModelBatch(slices[:1])).cpu()]
        out.append(runner.execute(ModelBatch(slices[1:])).cpu())
        lengths = [len(p) for p in prompts]
        for step in range(7):
            decode = []
            for i, table in enumerate(tables):
                decode.append(SequenceSlice([1000 + 7 * step + i], lengths[i], table))
                lengths[i] += 1
            out.append(runner.execute(ModelBatch(decode)).cpu())
        assert lengths[0] == 2048
        extra = SequenceSlice(list(range(3, 13)), 0, [next_block], LogitsWanted.ALL)
        out.append(runner.execute(ModelBatch([extra])).cpu())
        return out

    graphs = cuda_runner(eager=False)
    assert graphs.decode_graphs
    got = session(graphs)
    assert graphs.num_prefill_graph_replays == 2
    del graphs
    gc.collect()
    torch.cuda.empty_cache()
    expected = session(cuda_runner(eager=True))
    for a, b in zip(got, expected, strict=True):
        assert torch.isfinite(a).all() and b.std() > 0
        # Dummy weights give small logits: the tolerance follows their scale.
        torch.testing.assert_close(a, b, atol=1e-3 * float(b.abs().max()), rtol=1e-3)
