"""The engine freezes its start-up heap (short full collections while serving) and unfreezes
it at exit (native extensions see their objects freed, not leaked)."""

from __future__ import annotations

import subprocess
import sys

from mono_llm.core.testing import fixture_path


def test_llm_freezes_the_startup_heap_and_exits_cleanly() -> None:
    script = (
        "import gc\n"
        "from mono_llm.core import LLM, SamplingParams\n"
        f"llm = LLM({str(fixture_path('tiny-llama'))!r}, device='cpu')\n"
        "print('frozen', gc.get_freeze_count())\n"
        "from mono_llm.core.sampling_params import StructuredOutputsParams as S\n"
        "params = SamplingParams(max_tokens=4, structured_outputs=S(json_object=True))\n"
        "llm.generate(['hi'], params, use_tqdm=False)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    frozen = int(done.stdout.split("frozen")[1].split()[0])
    assert frozen > 10_000  # torch, the tokenizer and the model's modules
    assert "leaked" not in done.stderr
