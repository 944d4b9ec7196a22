"""The runner's CUDA path: Triton kernels, persistent buffers, profiling, decode and prefill
CUDA graphs.

Skipped without a GPU (CI); run on the lent H100 with `pytest -m gpu`.
"""

from __future__ import annotations

import functools

import pytest
import torch

from mono_llm.core.config import EngineArgs
from mono_llm.core.testing import DECODER_LAYOUT_FIXTURES, fixture_path
from mono_llm.core.worker.batch import LogitsWanted, ModelBatch, SequenceSlice
from mono_llm.core.worker.model_runner import ModelRunner

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def cuda_runner(name: str, *, dtype: str, eager: bool, prefill_graphs: int = 0) -> ModelRunner:
    args = EngineArgs(
        cuda_graph_max_prefill_tokens=prefill_graphs,
        model=str(fixture_path(name)),
        device="cuda",
        dtype=dtype,
        max_num_seqs=8,
        max_model_len=256,
        max_num_batched_tokens=512,
        gpu_memory_utilization=0.5,
        enforce_eager=eager,
    )
    return ModelRunner(args.create_engine_config())


@functools.cache
def hf_model(name: str) -> torch.nn.Module:
    import transformers

    # Eager attention is the exact reference: some transformers releases run Gemma 2 through
    # SDPA by default, which skips its attention soft-capping.
    return transformers.AutoModelForCausalLM.from_pretrained(
        fixture_path(name), dtype=torch.float32, attn_implementation="eager"
    ).eval()


@torch.no_grad()
def hf_logits(name: str, tokens: list[int]) -> torch.Tensor:
    return hf_model(name)(torch.tensor([tokens])).logits[0]


def run_session(runner: ModelRunner, num_steps: int = 6) -> list[list[torch.Tensor]]:
    """Prefill 3 prompts, decode (3 sequences -> graph of 4), add 2 prompts, decode 5 (graph
    of 8). Returns each sequence's logits rows, on the CPU."""
    gen = torch.Generator().manual_seed(0)
    prompts = [
        torch.randint(0, runner.vocab_size, (n,), generator=gen).tolist() for n in (5, 33, 70, 9, 2)
    ]
    order = torch.randperm(runner.num_blocks, generator=gen).tolist()
    tables: list[list[int]] = []
    seqs: list[list[int]] = []
    rows: list[list[torch.Tensor]] = []

    def table_for(n: int, table: list[int]) -> list[int]:
        while len(table) * runner.block_size < n:
            table.append(order.pop())
        return table

    def add(prompt_ids: list[int]) -> SequenceSlice:
        seqs.append(list(prompt_ids))
        tables.append(table_for(len(prompt_ids), []))
        rows.append([])
        return SequenceSlice(list(prompt_ids), 0, list(tables[-1]), LogitsWanted.ALL)

    pending = [add(p) for p in prompts[:3]]
    for step in range(num_steps):
        slices = list(pending)
        owners = list(range(len(seqs) - len(pending), len(seqs)))
        pending = []
        for i in range(len(seqs)):
            if i in owners:
                continue
            token = int(rows[i][-1].argmax())
            seqs[i].append(token)
            table_for(len(seqs[i]), tables[i])
            slices.insert(i, SequenceSlice([token], len(seqs[i]) - 1, list(tables[i])))
        owners = list(range(len(seqs)))
        out = runner.execute(ModelBatch(slices)).cpu()
        start = 0
        for i, s in zip(owners, slices, strict=True):
            n = s.num_tokens if s.logits == LogitsWanted.ALL else 1
            rows[i].extend(out[start : start + n])
            start += n
        if step == 2:
            pending = [add(p) for p in prompts[3:]]
    return [seqs, rows]


@pytest.mark.parametrize("name", DECODER_LAYOUT_FIXTURES)
def test_cuda_graph_runner_matches_hf(name: str) -> None:
    runner = cuda_runner(name, dtype="float32", eager=False)
    assert sorted(runner.decode_graphs) == [1, 2, 4, 8]
    seqs, rows = run_session(runner)
    for seq, seq_rows in zip(seqs, rows, strict=True):
        got = torch.stack(seq_rows)
        expected = hf_logits(name, seq)[: len(got)]
        # Triton's float32 dots run in tf32: ~1e-3 relative.
        torch.testing.assert_close(got, expected, atol=3e-2, rtol=1e-2)
        assert torch.equal(got.argmax(-1), expected.argmax(-1))


@pytest.mark.parametrize("name", DECODER_LAYOUT_FIXTURES)
def test_prefill_cuda_graphs_match_hf(name: str) -> None:
    """Step 0 (3 prompts, 108 tokens) replays the 128-token prefill graph with 20 padding
    tokens; step 3 (3 decodes + 2 prompts, 14 tokens) the 16-token one; decodes their graphs."""
    runner = cuda_runner(name, dtype="float32", eager=False, prefill_graphs=512)
    # Capped at max_model_len (256): one sequence may hold every token of a size.
    assert sorted(runner.prefill_graphs) == [16, 32, 64, 128, 256]
    seqs, rows = run_session(runner)
    assert runner.num_prefill_graph_replays == 2
    for seq, seq_rows in zip(seqs, rows, strict=True):
        got = torch.stack(seq_rows)
        expected = hf_logits(name, seq)[: len(got)]
        torch.testing.assert_close(got, expected, atol=3e-2, rtol=1e-2)
        assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_prefill_graph_needs_a_slot_for_its_padding() -> None:
    """max_num_seqs is 8: 8 sequences of 2 tokens fill the 16-token graph exactly; 7 sequences
    of 12 tokens leave a slot for the padding sequence; 8 sequences of 12 tokens leave none in
    any graph (each has 8 slots), so that step runs eagerly."""
    runner = cuda_runner("tiny-llama", dtype="float32", eager=False, prefill_graphs=32)
    eager = cuda_runner("tiny-llama", dtype="float32", eager=True)
    for lens, size in (([2] * 8, 16), ([1, 2, 2, 2, 2, 2, 1], 16), ([1, 2] * 4, None)):
        slices = [
            SequenceSlice(list(range(3, 3 + n)), 0, [i], LogitsWanted.ALL)
            for i, n in enumerate(lens)
        ]
        assert runner.graphs.prefill_size(runner.prepare(ModelBatch(slices))) == size
        before = runner.num_prefill_graph_replays
        got = runner.execute(ModelBatch(slices)).cpu()
        assert runner.num_prefill_graph_replays == before + (size is not None)
        expected = eager.execute(ModelBatch(slices)).cpu()
        torch.testing.assert_close(got, expected, atol=3e-2, rtol=1e-2)


@pytest.mark.parametrize("prefill_graphs", [0, 512])
def test_cuda_graphs_match_eager_bf16(prefill_graphs: int) -> None:
    graphs = cuda_runner("tiny-llama", dtype="bfloat16", eager=False, prefill_graphs=prefill_graphs)
    eager = cuda_runner("tiny-llama", dtype="bfloat16", eager=True)
    assert not eager.decode_graphs and graphs.decode_graphs
    assert not eager.prefill_graphs and bool(graphs.prefill_graphs) == bool(prefill_graphs)
    seqs_g, rows_g = run_session(graphs)
    seqs_e, rows_e = run_session(eager)
    assert seqs_g == seqs_e
    for a, b in zip(rows_g, rows_e, strict=True):
        torch.testing.assert_close(torch.stack(a), torch.stack(b), atol=5e-2, rtol=2e-2)


def overlap_llm(overlap: bool, async_scheduling: bool = False):
    from mono_llm.core import LLM

    return LLM(
        model=str(fixture_path("tiny-llama")),
        device="cuda",
        dtype="float32",
        max_num_seqs=8,
        max_model_len=256,
        max_num_batched_tokens=512,
        gpu_memory_utilization=0.5,
        cuda_graph_max_prefill_tokens=512,
        overlap_decode_prepare=overlap,
        async_scheduling=async_scheduling,
        enable_prefix_caching=False,
    )


def test_overlapped_decode_prepare_generates_the_same_tokens() -> None:
    """Decodes staged one step ahead give the tokens of decodes prepared in their own step,
    across block boundaries (no speculation there), sequences finishing at different steps
    (the batch shrinks: the staged step is dropped) and a request arriving mid-way."""
    from mono_llm.core import SamplingParams

    gen = torch.Generator().manual_seed(1)
    prompts = [
        {"prompt_token_ids": torch.randint(3, 1000, (n,), generator=gen).tolist()}
        for n in (5, 30, 47, 12)
    ]
    params = [
        SamplingParams(temperature=0, max_tokens=m, min_tokens=m, ignore_eos=True)
        for m in (40, 23, 9, 31)
    ]
    results = {}
    for overlap in (False, True):
        engine = overlap_llm(overlap).llm_engine
        for i in range(3):
            engine.add_request(str(i), prompts[i], params[i])
        finished = {}
        step = 0
        while engine.has_unfinished_requests() or step < 6:
            if step == 5:  # arrives while the first three decode
                engine.add_request("3", prompts[3], params[3])
            for out in engine.step():
                if out.finished:
                    finished[out.request_id] = out.outputs[0].token_ids
            step += 1
        results[overlap] = [finished[str(i)] for i in range(4)]
        runner = engine.model_runner
        if overlap:
            assert runner.num_speculated_decode_steps > 20
        else:
            assert runner.num_speculated_decode_steps == 0
    assert results[True] == results[False]
    assert [len(t) for t in results[True]] == [40, 23, 9, 31]


def test_async_scheduling_generates_the_same_tokens() -> None:
    """Decode steps launched from the sampled tokens on the device before the host reads them
    give the tokens of the ordinary loop: across block boundaries, sequences finishing at
    different steps (by length and by a stop token: their one-step-late rows are dropped and
    never emitted), and a request arriving mid-way (the launched step is discarded)."""
    from mono_llm.core import SamplingParams

    gen = torch.Generator().manual_seed(2)
    prompts = [
        {"prompt_token_ids": torch.randint(3, 1000, (n,), generator=gen).tolist()}
        for n in (5, 30, 47, 12, 9)
    ]
    params = [
        SamplingParams(temperature=0, max_tokens=m, min_tokens=m, ignore_eos=True)
        for m in (40, 23, 9, 31)
    ]
    params.append(SamplingParams(temperature=0.7, seed=3, max_tokens=60))
    results = {}
    for use_async in (False, True):
        engine = overlap_llm(True, async_scheduling=use_async).llm_engine
        for i in (0, 1, 2, 4):
            engine.add_request(str(i), prompts[i], params[i])
        finished = {}
        step = 0
        while engine.has_unfinished_requests() or step < 6:
            if step == 5:  # arrives while the others decode
                engine.add_request("3", prompts[3], params[3])
            for out in engine.step():
                if out.finished:
                    finished[out.request_id] = out.outputs[0].token_ids
            step += 1
        results[use_async] = [finished[str(i)] for i in range(5)]
        launched = engine.model_runner.num_launched_decode_steps
        assert launched > 20 if use_async else launched == 0
    assert results[True] == results[False]
    assert [len(t) for t in results[True][:4]] == [40, 23, 9, 31]
    # A stop token id taken from the sampled request's own output ends it early: the
    # launched step past it is dropped, so nothing after the stop token is emitted.
    stop_at = results[False][4][10]
    outs = {}
    for use_async in (False, True):
        llm = overlap_llm(True, async_scheduling=use_async)
        out = llm.generate(
            [prompts[4], prompts[0]],
            [params[4].clone(stop_token_ids=[stop_at]), params[0]],
            use_tqdm=False,
        )
        outs[use_async] = [o.outputs[0].token_ids for o in out]
    assert outs[True] == outs[False]
    assert outs[True][0][-1] == stop_at and stop_at not in outs[True][0][:-1]
