"""The engine's own cost per step, without a model: scheduler, KV bookkeeping, sampler,
detokenizer and outputs around a runner that returns precomputed logits instantly.

    .venv/bin/python scripts/bench_engine_overhead.py [--seqs 256] [--vocab 1267]

This is the host time a GPU step must hide or add: at 256 running decodes it is what every
decode step pays on top of the model's forward pass.
"""

from __future__ import annotations

import argparse
import time

import torch

from mono_llm.core.config import EngineArgs
from mono_llm.core.engine.core import EngineCore
from mono_llm.core.sampling_params import RequestOutputKind, SamplingParams
from mono_llm.core.testing import fixture_path
from mono_llm.core.tokenizer import load_tokenizer
from mono_llm.core.worker.batch import ModelBatch


class InstantRunner:
    """Stands in for the model runner: logits rows of the requested shape, no compute."""

    def __init__(self, vocab_size: int, max_rows: int) -> None:
        self.vocab_size = vocab_size
        self.num_blocks = 65536
        self.block_size = 16
        self.device = torch.device("cpu")
        self._logits = torch.randn(max_rows, vocab_size)

    def execute(self, batch: ModelBatch) -> torch.Tensor:
        return self._logits[: sum(batch.logits_row_counts())].clone()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seqs", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=1267)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3, help="best of this many runs per case")
    args = parser.parse_args()
    engine_args = EngineArgs(
        model=str(fixture_path("tiny-llama")), max_model_len=1024, max_num_seqs=args.seqs
    )
    config = engine_args.create_engine_config()
    tokenizer = load_tokenizer(config.model_config)
    cases = [
        ("greedy, no detokenize, FINAL_ONLY", dict(temperature=0, detokenize=False), "FINAL_ONLY"),
        ("greedy, detokenize, DELTA", dict(temperature=0), "DELTA"),
        ("temperature+top_p, detokenize, DELTA", dict(temperature=0.8, top_p=0.95), "DELTA"),
    ]
    print(f"| case ({args.seqs} decodes, vocab {args.vocab}) | ms/step |")
    print("|---|---|")
    for name, knobs, kind in cases:
        best = min(_run(config, tokenizer, args, knobs, kind) for _ in range(args.reps))
        print(f"| {name} | {best:.2f} |")


def _run(config, tokenizer, args, knobs: dict, kind: str) -> float:
    """ms per decode step of one run."""
    engine = EngineCore(
        config, model_runner=InstantRunner(args.vocab, args.seqs), tokenizer=tokenizer
    )
    params = SamplingParams(
        max_tokens=args.steps + 2, ignore_eos=True, output_kind=RequestOutputKind[kind], **knobs
    )
    for i in range(args.seqs):
        prompt = [(7 * i + j) % 1200 + 10 for j in range(128)]
        engine.add_request(str(i), {"prompt_token_ids": prompt}, params)
    engine.step()  # prefill
    engine.step()
    start = time.perf_counter()
    steps = 0
    while engine.has_unfinished_requests():
        engine.step()
        steps += 1
    return 1000 * (time.perf_counter() - start) / steps


if __name__ == "__main__":
    main()
