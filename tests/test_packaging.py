"""The five distributions share the `mono_llm` namespace and each imports on its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "kernels": "kernels",
    "core": "core",
    "multimodal": "multimodal",
    "audio": "audio",
    "openai_api": "openai-api",
}
# What each package may pull in of its siblings (the layering of docs/architecture.md: kernels <- core <- openai_api).
ALLOWED = {
    "kernels": {"kernels"},
    "core": {"core", "kernels"},
    "multimodal": {"multimodal"},
    "audio": {"audio"},
    "openai_api": {"openai_api", "core", "kernels"},
}


def test_no_package_ships_a_namespace_init():
    for folder in PACKAGES.values():
        assert not (ROOT / "packages" / folder / "src" / "mono_llm" / "__init__.py").exists()


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_package_imports_alone(name):
    code = (
        f"import mono_llm.{name} as m, sys; "
        "print(m.__version__); "
        "print(' '.join(sorted({k.split('.')[1] for k in sys.modules "
        "if k.startswith('mono_llm.')})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[0].startswith("0.")
    loaded = set(out[1].split())
    assert loaded <= ALLOWED[name], f"mono_llm.{name} imported {loaded - ALLOWED[name]}"


def test_cli_version():
    exe = Path(sys.executable).with_name("mono-llm")
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip().startswith("mono-llm 0.")
