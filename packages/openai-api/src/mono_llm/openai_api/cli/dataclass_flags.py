"""argparse flags generated from a config dataclass (STYLE #8, as vLLM's cli_args).

Each field becomes `--field-name`, typed from its annotation, defaulting to the field's
default, with the field's docstring as help text: adding a field to EngineArgs adds a
documented flag, and flags, defaults and docs cannot drift apart.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from dataclasses import MISSING, Field, fields
from typing import Any

from mono_llm.core.config import field_docs

# vLLM's short spellings, so its documented command lines parse as written.
SHORT_FLAGS = {
    "tensor_parallel_size": "-tp",
    "data_parallel_size": "-dp",
    "pipeline_parallel_size": "-pp",
    "quantization": "-q",
}


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _default(f: Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def _unwrap_optional(tp: Any) -> Any:
    """`X | None` -> X."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def string_list(value: str) -> list[str]:
    """A JSON list (vLLM's form: '["*"]') or a single value."""
    text = value.strip()
    if text.startswith("["):
        parsed = json.loads(text)
        if not isinstance(parsed, list):
            raise argparse.ArgumentTypeError(f"expected a JSON list, got {value!r}")
        return [str(v) for v in parsed]
    return [value]


def json_object(value: str) -> dict[str, Any]:
    """A JSON object flag value (vLLM's form: '{"image": 2}')."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {value!r}") from exc
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {value!r}")
    return parsed


class _ExtendStringLists(argparse.Action):
    """Each value may be a JSON list; values of repeated flags add up."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        current = getattr(namespace, self.dest, None)
        if current is None or current is self.default:
            current = []
        for value in values:
            current = [*current, *string_list(value)]
        setattr(namespace, self.dest, current)


def add_dataclass_flags(
    group: argparse._ActionsContainer,
    cls: type,
    *,
    skip: frozenset[str] = frozenset(),
    help_overrides: dict[str, str] | None = None,
) -> list[str]:
    """Add one flag per field of `cls` (except `skip`); returns the field names added."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    added = []
    for f in fields(cls):
        if f.name in skip:
            continue
        tp = _unwrap_optional(hints[f.name])
        default = _default(f)
        help_text = (help_overrides or {}).get(f.name) or docs.get(f.name, "")
        kwargs: dict[str, Any] = {"dest": f.name, "default": default}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) is list:
            kwargs["action"] = _ExtendStringLists
            kwargs["nargs"] = "+"
            kwargs["metavar"] = f.name.upper()
        elif typing.get_origin(tp) is dict:
            kwargs["type"] = json_object
            kwargs["metavar"] = "JSON"
        elif tp in (int, float, str):
            kwargs["type"] = tp
            kwargs["metavar"] = {int: "N", float: "X", str: "VALUE"}[tp]
        else:
            raise TypeError(f"no flag type for {cls.__name__}.{f.name}: {hints[f.name]}")
        if not (default is None or default == [] or default == {}) or tp is bool:
            shown = json.dumps(default) if isinstance(default, list) else default
            help_text = f"{help_text} (default: {shown})".strip()
        kwargs["help"] = help_text.replace("%", "%%")
        short = [SHORT_FLAGS[f.name]] if f.name in SHORT_FLAGS else []
        group.add_argument(flag_name(f.name), *short, **kwargs)
        added.append(f.name)
    return added
