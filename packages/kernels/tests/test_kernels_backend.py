"""Backend switch and import hygiene of mono_llm.kernels."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from mono_llm import kernels


def test_forcing_triton_where_it_cannot_run_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with kernels.use_backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        kernels.rms_norm(torch.randn(2, 8), torch.ones(8), 1e-6)
    assert kernels.get_backend() == "auto"  # restored after the exception


def test_import_needs_neither_triton_nor_core_nor_transformers():
    code = (
        "import sys; sys.modules['triton'] = None; sys.modules['triton.language'] = None\n"
        "import torch, mono_llm.kernels as k\n"
        "assert not k.HAS_TRITON\n"
        "y = k.silu_and_mul(torch.ones(2, 4))\n"
        "assert y.shape == (2, 2)\n"
        "bad = [m for m in sys.modules if m.startswith(('mono_llm.core', 'transformers'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
