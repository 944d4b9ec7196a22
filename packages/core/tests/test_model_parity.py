"""The model runner against HF transformers on the tiny fixtures (same weights, float32, CPU).

Covers ragged prefill, chunked prefill over a cached prefix, decode steps (graph-free on CPU),
mixed prefill+decode steps, shuffled block tables and bfloat16.
"""

from __future__ import annotations

import functools
import random

import pytest
import torch

from mono_llm.core.config import EngineArgs
from mono_llm.core.testing import DECODER_FIXTURES, fixture_path
from mono_llm.core.worker.batch import LogitsWanted, ModelBatch, SequenceSlice
from mono_llm.core.worker.model_runner import ModelRunner

FIXTURES = DECODER_FIXTURES
ATOL = 2e-4


@functools.cache
def hf_model(name: str) -> torch.nn.Module:
    import transformers

    # Eager attention is the exact reference: some transformers releases run Gemma 2 through
    # SDPA by default, which skips its attention soft-capping.
    return transformers.AutoModelForCausalLM.from_pretrained(
        fixture_path(name), dtype=torch.float32, attn_implementation="eager"
    ).eval()


@functools.cache
def runner(name: str, dtype: str = "float32", block_size: int = 16) -> ModelRunner:
    args = EngineArgs(
        model=str(fixture_path(name)),
        device="cpu",
        dtype=dtype,
        max_num_seqs=8,
        max_model_len=256,
        block_size=block_size,
        kv_cache_memory_gib=0.01,
    )
    return ModelRunner(args.create_engine_config())


@torch.no_grad()
def hf_logits(name: str, tokens: list[int]) -> torch.Tensor:
    return hf_model(name)(torch.tensor([tokens])).logits[0].float()  # [len, vocab]


class Blocks:
    """A toy block allocator: hands out block ids in a (possibly shuffled) order."""

    def __init__(self, num_blocks: int, block_size: int, shuffle_seed: int | None = None) -> None:
        self.free = list(range(num_blocks))
        if shuffle_seed is not None:
            random.Random(shuffle_seed).shuffle(self.free)
        self.block_size = block_size

    def table(self, num_tokens: int) -> list[int]:
        count = -(-num_tokens // self.block_size)
        taken, self.free = self.free[:count], self.free[count:]
        return taken

    def grow(self, table: list[int], num_tokens: int) -> list[int]:
        while len(table) * self.block_size < num_tokens:
            table.append(self.free.pop(0))
        return table


def prompts(vocab: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in (7, 3, 41, 18)]


@pytest.mark.parametrize("name", FIXTURES)
def test_ragged_prefill_matches_hf(name: str) -> None:
    r = runner(name)
    blocks = Blocks(r.num_blocks, r.block_size)
    batch_prompts = prompts(r.vocab_size)
    batch = ModelBatch(
        [SequenceSlice(p, 0, blocks.table(len(p)), LogitsWanted.ALL) for p in batch_prompts]
    )
    logits = r.execute(batch)
    assert logits.dtype == torch.float32
    assert logits.shape == (sum(map(len, batch_prompts)), r.vocab_size)
    expected = torch.cat([hf_logits(name, p) for p in batch_prompts])
    torch.testing.assert_close(logits, expected, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("name", FIXTURES)
def test_chunked_prefill_then_decode_matches_hf(name: str) -> None:
    """Prompts fed in chunks of different sizes across steps, then decoded greedily, with a
    late prompt joining while others decode (mixed steps)."""
    r = runner(name)
    blocks = Blocks(r.num_blocks, r.block_size, shuffle_seed=3)
    a, b, c, late = prompts(r.vocab_size)
    seqs = {"a": list(a), "b": list(b), "c": list(c)}
    done = dict.fromkeys(seqs, 0)
    chunk = {"a": 3, "b": 2, "c": 17}
    tables = {k: [] for k in seqs}
    collected: dict[str, list[torch.Tensor]] = {k: [] for k in seqs}
    prompt_len = {k: len(v) for k, v in seqs.items()}
    # Chunked prefill: every step takes the next chunk of each unfinished prompt.
    while any(done[k] < prompt_len[k] for k in seqs):
        names = [k for k in seqs if done[k] < prompt_len[k]]
        slices = []
        for k in names:
            n = min(chunk[k], prompt_len[k] - done[k])
            blocks.grow(tables[k], done[k] + n)
            slices.append(
                SequenceSlice(
                    seqs[k][done[k] : done[k] + n], done[k], list(tables[k]), LogitsWanted.ALL
                )
            )
        out = r.execute(ModelBatch(slices))
        start = 0
        for k, s in zip(names, slices, strict=True):
            collected[k].append(out[start : start + s.num_tokens])
            start += s.num_tokens
            done[k] += s.num_tokens
    # Greedy decode; the late prompt's prefill joins the second decode step.
    seqs["late"], done["late"], tables["late"], collected["late"] = list(late), 0, [], []
    next_token = {k: int(collected[k][-1][-1].argmax()) for k in ("a", "b", "c")}
    for step in range(6):
        slices, names = [], []
        for k in ("a", "b", "c", "late"):
            if k == "late" and step == 1:
                blocks.grow(tables[k], len(late))
                slices.append(SequenceSlice(list(late), 0, list(tables[k]), LogitsWanted.ALL))
                names.append(k)
            elif k in next_token:
                seqs[k].append(next_token[k])
                blocks.grow(tables[k], done[k] + 1)
                slices.append(SequenceSlice([next_token[k]], done[k], list(tables[k])))
                names.append(k)
        out = r.execute(ModelBatch(slices))
        start = 0
        for k, s in zip(names, slices, strict=True):
            rows = s.num_tokens if s.logits == LogitsWanted.ALL else 1
            collected[k].append(out[start : start + rows])
            next_token[k] = int(out[start + rows - 1].argmax())
            start += rows
            done[k] += s.num_tokens
    for k in seqs:
        got = torch.cat(collected[k])
        # Every row is the distribution over the token after the position it belongs to.
        expected = hf_logits(name, seqs[k])
        torch.testing.assert_close(got, expected[: len(got)], atol=ATOL, rtol=1e-4)
        assert len(got) >= len(seqs[k]) - 1


def test_decode_only_steps_match_hf() -> None:
    name = "tiny-qwen3"
    r = runner(name)
    blocks = Blocks(r.num_blocks, r.block_size)
    batch_prompts = prompts(r.vocab_size)
    tables = [blocks.table(len(p)) for p in batch_prompts]
    out = r.execute(ModelBatch([SequenceSlice(p, 0, t) for p, t in zip(batch_prompts, tables)]))
    seqs = [list(p) for p in batch_prompts]
    rows = [[row] for row in out]
    for _ in range(5):
        tokens = [int(row[-1].argmax()) for row in rows]
        slices = []
        for seq, table, token in zip(seqs, tables, tokens, strict=True):
            seq.append(token)
            blocks.grow(table, len(seq))
            slices.append(SequenceSlice([token], len(seq) - 1, list(table)))
        batch = ModelBatch(slices)
        assert batch.is_decode_only
        out = r.execute(batch)
        assert out.shape == (len(seqs), r.vocab_size)
        for row_list, row in zip(rows, out, strict=True):
            row_list.append(row)
    for seq, row_list in zip(seqs, rows, strict=True):
        expected = hf_logits(name, seq)[len(seq) - len(row_list) :]
        torch.testing.assert_close(torch.stack(row_list), expected, atol=ATOL, rtol=1e-4)


def test_shuffled_noncontiguous_block_table_matches_hf() -> None:
    """Tiny blocks (4 tokens) scattered over the cache in random order."""
    name = "tiny-llama"
    r = runner(name, block_size=4)
    blocks = Blocks(r.num_blocks, r.block_size, shuffle_seed=11)
    blocks.free = blocks.free[::3] + blocks.free[1::3]  # gaps between neighbours too
    p = prompts(r.vocab_size)[2]
    table = blocks.table(len(p))
    assert table != sorted(table)
    half = len(p) // 2
    first = r.execute(ModelBatch([SequenceSlice(p[:half], 0, table, LogitsWanted.ALL)]))
    second = r.execute(ModelBatch([SequenceSlice(p[half:], half, table, LogitsWanted.ALL)]))
    torch.testing.assert_close(torch.cat([first, second]), hf_logits(name, p), atol=ATOL, rtol=1e-4)


def test_logits_rows_follow_logits_wanted() -> None:
    r = runner("tiny-mistral")
    blocks = Blocks(r.num_blocks, r.block_size)
    p = prompts(r.vocab_size)
    wanted = [LogitsWanted.NONE, LogitsWanted.LAST, LogitsWanted.ALL, LogitsWanted.LAST]
    batch = ModelBatch(
        [SequenceSlice(x, 0, blocks.table(len(x)), w) for x, w in zip(p, wanted, strict=True)]
    )
    out = r.execute(batch)
    assert out.shape[0] == sum(batch.logits_row_counts()) == 1 + len(p[2]) + 1
    torch.testing.assert_close(out[0], hf_logits("tiny-mistral", p[1])[-1], atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(out[-1], hf_logits("tiny-mistral", p[3])[-1], atol=ATOL, rtol=1e-4)
    none_only = ModelBatch([SequenceSlice(p[0], 0, blocks.table(len(p[0])), LogitsWanted.NONE)])
    assert r.execute(none_only).shape == (0, r.vocab_size)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-gpt-neox"])
def test_bfloat16_on_cpu_tracks_float32(name: str) -> None:
    r = runner(name, dtype="bfloat16")
    assert {p.dtype for p in r.model.parameters()} == {torch.bfloat16}
    assert r.kv_cache.dtype == torch.bfloat16
    p = prompts(r.vocab_size)[2]
    blocks = Blocks(r.num_blocks, r.block_size)
    out = r.execute(ModelBatch([SequenceSlice(p, 0, blocks.table(len(p)), LogitsWanted.ALL)]))
    expected = hf_logits(name, p)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    # bf16 keeps ~3 significant digits; through 2 layers the worst logit moves by ~0.23
    # (std 1.6) and the argmax never changes on this prompt.
    assert (out - expected).abs().max() < 0.25 * expected.std()
    agree = (out.argmax(-1) == expected.argmax(-1)).float().mean()
    assert agree > 0.95


def test_step_limits_are_enforced() -> None:
    from mono_llm.core.errors import EngineError

    r = runner("tiny-llama")
    with pytest.raises(EngineError, match="blocks cannot hold"):
        r.execute(ModelBatch([SequenceSlice(list(range(40)), 0, [0])]))
    with pytest.raises(EngineError, match="exceeds"):
        r.execute(ModelBatch([SequenceSlice([1], 0, [i]) for i in range(9)]))


@pytest.mark.parametrize("name", ["tiny-gemma2", "tiny-gemma3"])
def test_windowed_gemma_through_the_triton_kernels_matches_hf(name: str) -> None:
    """The CPU runs above take the kernels' torch references; this one forces every op through
    its Triton kernel (the interpreter on CPU): windowed prefill and decode attention past the
    fixtures' 16-token window (soft-capped for Gemma 2; for Gemma 3 the q/k head norms and the
    two rotary tables, one per layer kind), the unit-offset norms, the GeGLU."""
    from mono_llm import kernels
    from mono_llm.kernels.backend import triton_can_run

    if not triton_can_run("cpu"):
        pytest.skip("Triton cannot run on CPU here (TRITON_INTERPRET is not 1)")
    r = runner(name)
    blocks = Blocks(r.num_blocks, r.block_size, shuffle_seed=5)
    long, short = prompts(r.vocab_size)[2], prompts(r.vocab_size)[1]  # 41 and 3 tokens
    tables = [blocks.table(len(long) + 3), blocks.table(len(short) + 3)]
    seqs, rows = [list(long), list(short)], [[], []]
    with kernels.use_backend("triton"):
        out = r.execute(
            ModelBatch([SequenceSlice(s, 0, t, LogitsWanted.ALL) for s, t in zip(seqs, tables)])
        )
        rows[0].extend(out[: len(long)])
        rows[1].extend(out[len(long) :])
        for _ in range(3):  # decode-only steps: the split-K kernel
            tokens = [int(row[-1].argmax()) for row in rows]
            slices = []
            for seq, table, token in zip(seqs, tables, tokens, strict=True):
                seq.append(token)
                slices.append(SequenceSlice([token], len(seq) - 1, table))
            out = r.execute(ModelBatch(slices))
            for row_list, row in zip(rows, out, strict=True):
                row_list.append(row)
    for seq, row_list in zip(seqs, rows, strict=True):
        got = torch.stack(row_list)
        torch.testing.assert_close(got, hf_logits(name, seq)[: len(got)], atol=ATOL, rtol=1e-4)
