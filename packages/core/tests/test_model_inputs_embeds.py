"""The inputs_embeds path: a model fed its own embeddings gives the logits of its token ids.

Covers the model interface (`embed_input_ids`, `forward(None, positions, inputs_embeds=...)`),
the runner's embedding overrides on slices (the seam multimodal inputs use), eager on CPU and,
on a GPU, through the decode and prefill CUDA graphs (whose persistent input is embeddings).
"""

from __future__ import annotations

import pytest
import torch

from mono_llm.core.config import EngineArgs
from mono_llm.core.models.interface import EngineModel
from mono_llm.core.testing import DECODER_LAYOUT_FIXTURES, fixture_path
from mono_llm.core.worker.batch import EmbedsOverride, LogitsWanted, ModelBatch, SequenceSlice
from mono_llm.core.worker.model_runner import ModelRunner


def make_runner(name: str, **overrides: object) -> ModelRunner:
    args = dict(
        model=str(fixture_path(name)),
        device="cpu",
        dtype="float32",
        max_num_seqs=8,
        max_model_len=256,
        max_num_batched_tokens=512,
        kv_cache_memory_gib=0.01,
    )
    args.update(overrides)
    return ModelRunner(EngineArgs(**args).create_engine_config())


# Fixtures whose embedding is a lookup and then a matmul (OPT's project_in): the test embeds
# each prompt alone, the ids path the whole batch at once, and a GEMM's rounding may depend on
# its row count, so these match to float32 rounding rather than bit for bit.
PROJECTED_EMBEDDINGS = {"tiny-opt-post-ln"}


def assert_same_logits(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    if name in PROJECTED_EMBEDDINGS:
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    else:
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def prompts(runner: ModelRunner) -> list[list[int]]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(0, runner.vocab_size, (n,), generator=gen).tolist() for n in (7, 20, 3)]


def batch(runner: ModelRunner, ids: list[list[int]], *, own_embeds: bool) -> ModelBatch:
    """Whole prompts, each with every row's logits; with own_embeds, each slice's input
    embeddings come as an override computed by the model from the same ids."""
    slices, next_block = [], 0
    for tokens in ids:
        blocks = -(-len(tokens) // runner.block_size)
        table = list(range(next_block, next_block + blocks))
        next_block += blocks
        overrides = None
        if own_embeds:
            with torch.inference_mode():
                embeds = runner.model.embed_input_ids(torch.tensor(tokens, device=runner.device))
            overrides = [EmbedsOverride(0, embeds)]
        slices.append(SequenceSlice(tokens, 0, table, LogitsWanted.ALL, overrides))
    return ModelBatch(slices)


@pytest.mark.parametrize(
    "name", ["tiny-llama", "tiny-bert", "tiny-qwen2-classifier", "tiny-opt-post-ln"]
)
def test_models_implement_the_interface(name: str) -> None:
    from mono_llm.core.models.loader import build_model

    config = EngineArgs(model=str(fixture_path(name)), device="cpu").create_engine_config()
    model = build_model(config.model_config, torch.device("cpu"))
    assert isinstance(model, EngineModel)
    ids = torch.tensor([3, 5, 7])
    assert model.embed_input_ids(ids).shape == (3, model.hidden_size)


# tiny-opt-post-ln: the embeddings go through project_in and get learned positions added.
# tiny-gemma / tiny-gemma2 / tiny-gemma3: embed_input_ids scales them by sqrt(hidden), forward
# does not; tiny-granite likewise by embedding_multiplier.
@pytest.mark.parametrize("name", DECODER_LAYOUT_FIXTURES)
def test_model_forward_from_embeddings_equals_token_ids(name: str) -> None:
    runner = make_runner(name)
    ids = prompts(runner)
    by_ids = runner.execute(batch(runner, ids, own_embeds=False))
    by_embeds = runner.execute(batch(runner, ids, own_embeds=True))
    assert by_ids.shape == (sum(map(len, ids)), runner.vocab_size)
    assert_same_logits(name, by_ids, by_embeds)


def test_overrides_replace_only_their_rows() -> None:
    runner = make_runner("tiny-llama")
    tokens = prompts(runner)[1]
    plain = runner.execute(batch(runner, [tokens], own_embeds=False))
    other = torch.randn(4, runner.hidden_size, generator=torch.Generator().manual_seed(2))
    table = list(range(-(-len(tokens) // runner.block_size)))
    mixed = ModelBatch(
        [SequenceSlice(tokens, 0, table, LogitsWanted.ALL, [EmbedsOverride(10, other)])]
    )
    logits = runner.execute(mixed)
    # Causal: rows before the override are untouched, rows from it on see the new inputs.
    assert torch.equal(logits[:10], plain[:10])
    assert not torch.allclose(logits[10:], plain[10:])


def test_override_outside_its_slice_is_refused() -> None:
    from mono_llm.core.errors import EngineError

    runner = make_runner("tiny-llama")
    embeds = torch.zeros(4, runner.hidden_size)
    bad = ModelBatch(
        [SequenceSlice([1, 2, 3], 0, [0], LogitsWanted.LAST, [EmbedsOverride(1, embeds)])]
    )
    with pytest.raises(EngineError, match="outside"):
        runner.execute(bad)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-opt-post-ln"])
@pytest.mark.parametrize("eager", [True, False])
def test_embeddings_path_on_cuda_matches_token_ids(eager: bool, name: str) -> None:
    """Prefill (a prefill graph when not eager) and decode (a decode graph) from embeddings
    give exactly the logits of the same steps from token ids."""
    runner = make_runner(
        name,
        device="cuda",
        enforce_eager=eager,
        cuda_graph_max_prefill_tokens=64,
        kv_cache_memory_gib=None,
        gpu_memory_utilization=0.5,
    )
    assert bool(runner.decode_graphs) != eager and bool(runner.prefill_graphs) != eager
    ids = prompts(runner)
    replays = runner.num_prefill_graph_replays
    by_ids = runner.execute(batch(runner, ids, own_embeds=False))
    by_embeds = runner.execute(batch(runner, ids, own_embeds=True))
    assert runner.num_prefill_graph_replays == replays + (0 if eager else 2)
    assert_same_logits(name, by_ids, by_embeds)
    decode = []
    for own in (False, True):
        slices = []
        for s in batch(runner, ids, own_embeds=own).slices:
            token = s.token_ids[-1]
            overrides = None
            if own:
                overrides = [
                    EmbedsOverride(
                        0, runner.model.embed_input_ids(torch.tensor([token], device="cuda"))
                    )
                ]
            slices.append(
                SequenceSlice(
                    [token], len(s.token_ids), s.block_table, LogitsWanted.LAST, overrides
                )
            )
        decode.append(runner.execute(ModelBatch(slices)).clone())
    assert_same_logits(name, decode[0], decode[1])
