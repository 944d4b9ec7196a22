"""Check that every built wheel carries its code and no `mono_llm/__init__.py`.

A hatchling misconfiguration can build a wheel with no code in it while the editable
install still imports fine, so the release path inspects the wheels themselves.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

EXPECTED = {
    "mono_llm_kernels": "mono_llm/kernels/__init__.py",
    "mono_llm_core": "mono_llm/core/__init__.py",
    "mono_llm_multimodal": "mono_llm/multimodal/__init__.py",
    "mono_llm_audio": "mono_llm/audio/__init__.py",
    "mono_llm_openai_api": "mono_llm/openai_api/__init__.py",
}


def main(dist: Path) -> int:
    problems: list[str] = []
    wheels = {w.name.split("-")[0]: w for w in dist.glob("*.whl")}
    for dist_name, module_file in EXPECTED.items():
        wheel = wheels.get(dist_name)
        if wheel is None:
            problems.append(f"no wheel for {dist_name} in {dist}")
            continue
        names = zipfile.ZipFile(wheel).namelist()
        if module_file not in names:
            problems.append(f"{wheel.name} lacks {module_file}")
        if "mono_llm/__init__.py" in names:
            problems.append(f"{wheel.name} ships mono_llm/__init__.py (breaks the namespace)")
    if "mono_llm" not in wheels:
        problems.append(f"no wheel for the umbrella mono-llm in {dist}")
    for problem in problems:
        print(f"check_wheels: {problem}", file=sys.stderr)
    if not problems:
        print(f"check_wheels: {len(wheels)} wheels ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "dist")))
