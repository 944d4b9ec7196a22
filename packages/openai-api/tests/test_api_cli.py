"""`mono-llm serve` flags: generated from the config dataclasses, with their docs as help."""

from __future__ import annotations

from dataclasses import fields

import pytest

from mono_llm.core.config import AsyncEngineArgs, field_docs
from mono_llm.openai_api.cli import build_parser, main
from mono_llm.openai_api.cli.serve import (
    DEMO_EMBEDDING_MODEL,
    DEMO_FIXTURE,
    engine_args_list,
    plan_models,
)
from mono_llm.openai_api.server_state import ServerArgs


def _serve_help() -> str:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "subcommand")
    return subparsers.choices["serve"].format_help()


def test_every_engine_and_server_field_is_a_documented_flag() -> None:
    text = " ".join(_serve_help().split())
    for cls in (AsyncEngineArgs, ServerArgs):
        docs = field_docs(cls)
        for f in fields(cls):
            assert "--" + f.name.replace("_", "-") in text, f.name
            if f.name not in ("model", "served_model_name"):
                assert docs[f.name][:40] in text, f.name


def test_issue_flags_with_vllm_defaults() -> None:
    args = build_parser().parse_args(["serve"])
    assert args.port == 8000 and args.host is None and args.dtype == "auto"
    assert args.generation_config == "auto" and args.chat_template_content_format == "auto"
    assert args.allowed_origins == ["*"] and args.enable_prefix_caching is True
    args = build_parser().parse_args(
        ["serve", "/m", "--dtype", "float32", "--max-model-len", "512", "--max-num-seqs", "4",
         "--max-num-batched-tokens", "256", "--api-key", "a", "--api-key", "b",
         "--allowed-origins", '["https://x", "https://y"]', "--no-enable-prefix-caching",
         "--enable-request-id-headers", "--enable-offline-docs", "--root-path", "/llm",
         "--ssl-keyfile", "k.pem", "--ssl-certfile", "c.pem", "--uvicorn-log-level", "debug",
         "--max-waiting-requests", "8", "--chat-template", "t.jinja"]
    )  # fmt: skip
    assert args.api_key == ["a", "b"]
    assert args.allowed_origins == ["https://x", "https://y"]
    assert args.enable_prefix_caching is False and args.max_waiting_requests == 8
    engines, aliases = engine_args_list(args)
    assert aliases == [[]]
    (engine,) = engines
    assert isinstance(engine, AsyncEngineArgs)
    assert (engine.model, engine.dtype, engine.max_model_len, engine.max_num_seqs) == (
        "/m", "float32", 512, 4,
    )  # fmt: skip
    assert engine.max_num_batched_tokens == 256 and engine.enable_prefix_caching is False
    (engine,), _ = engine_args_list(
        build_parser().parse_args(["serve", "/m", "--runner", "pooling"])
    )
    assert engine.task == "pooling"  # vLLM's spelling; the older --task embed still works
    (engine,), _ = engine_args_list(
        build_parser().parse_args(["serve", "/m", "--convert", "classify"])
    )
    assert engine.task == "classify"
    args = build_parser().parse_args(["serve", "/m", "-tp", "2", "-dp", "3", "-pp", "1"])
    (engine,), _ = engine_args_list(args)  # vLLM's short spellings
    assert (engine.tensor_parallel_size, engine.data_parallel_size) == (2, 3)
    args = build_parser().parse_args(["serve", "/m", "--hf-overrides", '{"a": {"b": 1}}'])
    (engine,), _ = engine_args_list(args)
    assert engine.hf_overrides == {"a": {"b": 1}}


def test_model_planning() -> None:
    parse = build_parser().parse_args
    models, names, aliases = plan_models(parse(["serve"]))
    # The demo model, plus all-MiniLM-L6-v2 for embeddings (its package is a dev dependency).
    assert aliases == [[], []]
    assert names == [DEMO_FIXTURE, DEMO_EMBEDDING_MODEL] and models[0].endswith(
        f"{DEMO_FIXTURE}-v1"
    )
    models, names, aliases = plan_models(parse(["serve", "/a", "--model", "/b"]))
    assert models == ["/a", "/b"] and names == [None, None]
    _, names, aliases = plan_models(parse(["serve", "/a", "--served-model-name", "x", "y"]))
    assert names == ["x"] and aliases == [["y"]]
    _, names, _ = plan_models(parse(["serve", "/a", "/b", "--served-model-name", "x", "y"]))
    assert names == ["x", "y"]
    with pytest.raises(SystemExit):
        plan_models(parse(["serve", "/a", "/b", "/c", "--served-model-name", "x", "y"]))


def test_no_subcommand_prints_help_and_fails(capsys) -> None:
    assert main([]) == 2
    assert "serve" in capsys.readouterr().err


def test_docs_cli_page_lists_exactly_the_serve_flags() -> None:
    import re
    from pathlib import Path

    page = Path(__file__).resolve().parents[3] / "docs" / "cli.md"
    if not page.is_file():  # an installed package without the repository around it
        pytest.skip("docs/cli.md is not next to this checkout")
    documented = set(re.findall(r"\| `(--[a-z-]+)`", page.read_text()))
    parser = build_parser()
    serve = next(a for a in parser._actions if a.dest == "subcommand").choices["serve"]
    flags = {
        option
        for action in serve._actions
        for option in action.option_strings[:1]
        if option.startswith("--") and option != "--help"
    }
    assert documented == flags


def test_bad_flags_and_paths_are_one_line_errors(capsys, tmp_path) -> None:
    assert main(["serve", str(tmp_path / "missing-model")]) == 2
    assert "neither a local folder nor a hub id" in capsys.readouterr().err
    assert main(["serve", "--dtype", "fp7"]) == 2
    assert "dtype must be one of" in capsys.readouterr().err
    assert main(["serve", "--api-key", f"@{tmp_path / 'no-keys.txt'}"]) == 2
    assert "no-keys.txt" in capsys.readouterr().err
    assert main(["serve", "--enable-auto-tool-choice"]) == 2
    assert "--tool-call-parser" in capsys.readouterr().err
    assert main(["serve", "--runner", "generate", "--convert", "embed"]) == 2
    assert "cannot be combined with runner=generate" in capsys.readouterr().err
    assert main(["serve", "--runner", "pooling", "--task", "generate"]) == 2
    assert "task=generate contradicts runner=pooling" in capsys.readouterr().err
    assert main(["serve", "-q", "awq"]) == 2
    assert "quantization='awq' is not supported" in capsys.readouterr().err
    assert main(["serve", "-pp", "2"]) == 2
    assert "--tensor-parallel-size" in capsys.readouterr().err


def test_bench_forwards_to_the_benchmark_modules(capsys) -> None:
    from mono_llm.openai_api.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "engine", "--help"])
    assert exit_info.value.code == 0
    assert "--workload" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "nonsense"])
    assert exit_info.value.code == 2
