"""Logits of one model folder from transformers and from the engine's model runner, for the
architecture tests that compare the two on the same weights (float32, CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def hf_logits(folder: Path, prompt: list[int]) -> torch.Tensor:
    """transformers' float32 logits [len(prompt), vocab], eager attention (the exact
    reference: other attention backends skip some models' options)."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        return model(torch.tensor([prompt])).logits[0].float()


def chunked_runner_logits(folder: Path, prompt: list[int], **overrides: Any) -> torch.Tensor:
    """Every row's logits from the engine's ModelRunner on CPU, the prompt run in two
    chunks (the second over a cached prefix); `overrides` are further EngineArgs."""
    from mono_llm.core.config import EngineArgs
    from mono_llm.core.worker.batch import LogitsWanted, ModelBatch, SequenceSlice
    from mono_llm.core.worker.model_runner import ModelRunner

    options: dict[str, Any] = {"dtype": "float32", **overrides}
    args = EngineArgs(
        model=str(folder), device="cpu", max_num_seqs=2, max_model_len=512,
        kv_cache_memory_gib=0.01, **options,
    )  # fmt: skip
    runner = ModelRunner(args.create_engine_config())
    table = list(range(-(-len(prompt) // runner.block_size)))
    half = len(prompt) // 2
    first = runner.execute(ModelBatch([SequenceSlice(prompt[:half], 0, table, LogitsWanted.ALL)]))
    second = runner.execute(
        ModelBatch([SequenceSlice(prompt[half:], half, table, LogitsWanted.ALL)])
    )
    return torch.cat([first, second])


def random_prompt(length: int, vocab: int, first: int = 3, seed: int = 1) -> list[int]:
    """`length` ids in [first, vocab), the same for the same arguments."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(first, vocab, (length,), generator=gen).tolist()


def assert_runner_matches_hf(
    folder: Path, prompt: list[int], reference: Path | None = None, atol: float = 2e-4
) -> None:
    """The runner's chunked logits of `folder` equal transformers' of `reference` (default:
    the same folder; another when `folder` is a re-export of it), with the same argmax."""
    expected = hf_logits(reference or folder, prompt)
    got = chunked_runner_logits(folder, prompt)
    torch.testing.assert_close(got, expected, atol=atol, rtol=1e-4)
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
