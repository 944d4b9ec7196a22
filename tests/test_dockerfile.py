"""The Dockerfile builds every distribution and serves through the `mono-llm` entry point.

No Docker engine runs on the CI machines, so the image itself is not built here; this keeps
its recipe from drifting away from the repository (a new package, a renamed command).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dockerfile_builds_every_package_and_serves() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    built = set(re.search(r"for p in ([\w\- ]+); do", dockerfile).group(1).split())
    packages = {p.name for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").is_file()}
    assert built == packages
    assert 'ENTRYPOINT ["mono-llm", "serve"]' in dockerfile
    api_pyproject = (ROOT / "packages/openai-api/pyproject.toml").read_text()
    assert 'mono-llm = "mono_llm.openai_api.cli:main"' in api_pyproject
    default_extra = re.search(r'ARG EXTRAS="(\w+)"', dockerfile).group(1)
    root_pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(rf"^{default_extra} = \[", root_pyproject, re.MULTILINE)
    # The health check polls a route the server really has (liveness, open without a key).
    assert "/health" in dockerfile
