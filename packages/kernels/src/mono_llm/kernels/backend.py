"""Backend selection: which implementation an op runs (Triton kernel or plain-torch reference).

Every public op asks :func:`use_triton` with its input tensor. In ``"auto"`` mode (the default)
CUDA tensors take the Triton kernel and CPU tensors the torch reference, so the same model code
runs on a GPU and on a laptop. ``"triton"`` forces the kernel (on CPU tensors this needs
``TRITON_INTERPRET=1`` set before triton is first imported: Triton's interpreter then runs the
kernel with numpy, which is how the kernels are tested in CI). ``"torch"`` forces the reference,
for A/B comparisons and debugging.

Triton is imported lazily-guarded here: on a machine without triton (macOS, Windows CPU wheels)
``import mono_llm.kernels`` still works and every op runs its reference.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any, Literal

import torch

try:  # triton is a Linux-only dependency; the references must work without it.
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is absent
    HAS_TRITON = False

    class _TritonStub:
        """Just enough of ``triton`` for the kernel modules to be defined (never launched)."""

        @staticmethod
        def jit(fn: Any = None, **_: Any) -> Any:
            return fn if fn is not None else (lambda f: f)

        @staticmethod
        def cdiv(a: int, b: int) -> int:
            return -(-a // b)

        @staticmethod
        def next_power_of_2(n: int) -> int:
            return 1 << max(0, (n - 1).bit_length())

    class _LanguageStub:
        constexpr = Any

    triton = _TritonStub()  # type: ignore[assignment]
    tl = _LanguageStub()  # type: ignore[assignment]

Backend = Literal["auto", "triton", "torch"]
_BACKENDS = ("auto", "triton", "torch")
_backend: Backend = "auto"


def interpreter_enabled() -> bool:
    """True when Triton kernels run through the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


def triton_can_run(device: torch.device | str) -> bool:
    """Whether a Triton kernel can execute on tensors of ``device`` in this process."""
    if not HAS_TRITON:
        return False
    device = torch.device(device)
    if device.type == "cuda":
        return True
    return device.type == "cpu" and interpreter_enabled()


def set_backend(backend: Backend) -> None:
    """Choose the implementation every op runs: ``"auto"``, ``"triton"`` or ``"torch"``."""
    global _backend
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    _backend = backend


def get_backend() -> Backend:
    """The backend set by :func:`set_backend` (``"auto"`` unless changed)."""
    return _backend


@contextlib.contextmanager
def use_backend(backend: Backend) -> Iterator[None]:
    """Run a block under a given backend, restoring the previous one afterwards."""
    previous = get_backend()
    set_backend(backend)
    try:
        yield
    finally:
        set_backend(previous)


def use_triton(tensor: torch.Tensor) -> bool:
    """Decide, for an op whose main input is ``tensor``, whether to launch the Triton kernel.

    Raises when the Triton backend is forced but cannot run, so a test or a benchmark never
    silently measures the reference.
    """
    if _backend == "torch":
        return False
    if _backend == "auto":
        return tensor.is_cuda and HAS_TRITON
    if not triton_can_run(tensor.device):
        raise RuntimeError(
            f"backend 'triton' was forced but Triton cannot run on {tensor.device} tensors "
            "(on CPU, set TRITON_INTERPRET=1 before importing triton)"
        )
    return True


__all__ = [
    "HAS_TRITON",
    "Backend",
    "get_backend",
    "interpreter_enabled",
    "set_backend",
    "tl",
    "triton",
    "triton_can_run",
    "use_backend",
    "use_triton",
]
