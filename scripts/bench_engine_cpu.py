"""Engine steps/s on CPU with the tiny-llama fixture (scheduler + runner + sampler + detokenizer).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_engine_cpu.py [--reps 3]

Each case runs `LLM.generate` with greedy, ignore_eos, token-id prompts that differ per request
(no prefix-cache hits); a step is one `EngineCore.step()`. Best of --reps runs is reported,
because the CPU is shared and noise only ever slows a run down.
"""

from __future__ import annotations

import argparse
import time

from mono_llm.core import LLM, SamplingParams
from mono_llm.core.testing import fixture_path

CASES = [  # (batch, prompt tokens, new tokens)
    (1, 32, 256),
    (8, 32, 128),
    (32, 128, 128),
    (128, 64, 64),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    llm = LLM(
        str(fixture_path("tiny-llama")),
        max_model_len=1024,
        num_gpu_blocks_override=2048,
        max_num_seqs=256,
    )
    engine = llm.llm_engine
    print("| batch | in | out | steps/s | output tok/s |")
    print("|---|---|---|---|---|")
    for batch, prompt_len, new_tokens in CASES:
        best = None
        for rep in range(args.reps):
            prompts = [
                {
                    "prompt_token_ids": [
                        (7 * i + 13 * j + rep) % 1200 + 10 for j in range(prompt_len)
                    ]
                }
                for i in range(batch)
            ]
            params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
            steps_before = engine.num_steps
            start = time.perf_counter()
            llm.generate(prompts, params, use_tqdm=False)
            elapsed = time.perf_counter() - start
            steps = engine.num_steps - steps_before
            if best is None or steps / elapsed > best[0]:
                best = (steps / elapsed, batch * new_tokens / elapsed)
        print(f"| {batch} | {prompt_len} | {new_tokens} | {best[0]:.0f} | {best[1]:.0f} |")


if __name__ == "__main__":
    main()
