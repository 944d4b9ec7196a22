"""The server on model folders it has never seen: named chat templates, no chat template,
several served names, `~` and trailing-slash paths, an unsupported architecture at start-up."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from mono_llm.core import AsyncEngineArgs
from mono_llm.core.testing.variants import derive_model
from mono_llm.core.tokenizer import load_tokenizer
from mono_llm.openai_api import ServerArgs, build_app
from mono_llm.openai_api.chat_template import ChatTemplate
from mono_llm.openai_api.cli import build_parser, main
from mono_llm.openai_api.cli.serve import engine_args_list

CHAT = [{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
# Reads content as a string / iterates over it as OpenAI parts.
STRING_TEMPLATE = "S:{% for m in messages %}{{ m['content'] }}{% endfor %}"
PARTS_TEMPLATE = (
    "P[{{ tools | length }}]:{% for m in messages %}{% for part in m['content'] %}"
    "{{ part.text }}{% endfor %}{% endfor %}"
)


def named_templates(config: dict[str, Any]) -> None:
    config["chat_template"] = [
        {"name": "default", "template": STRING_TEMPLATE},
        {"name": "tool_use", "template": PARTS_TEMPLATE},
    ]


def test_named_templates_pick_tool_use_with_its_own_content_format(tmp_path: Path) -> None:
    folder = derive_model("tiny-llama", tmp_path / "m", tokenizer_config=named_templates)
    tokenizer = load_tokenizer(str(folder))
    template = ChatTemplate.for_tokenizer(tokenizer, None)
    assert template.tokenizer_has_template and template.content_format == "string"
    assert template.render(tokenizer, CHAT) == "S:Hello there"
    assert template.render(tokenizer, CHAT, tools=TOOLS) == "P[1]:Hello there"


def test_named_templates_without_default_need_an_explicit_one(tmp_path: Path) -> None:
    from mono_llm.openai_api.errors import OpenAIError

    def only_tool_use(config: dict[str, Any]) -> None:
        config["chat_template"] = [
            {"name": "tool_use", "template": PARTS_TEMPLATE},
            {"name": "rag", "template": STRING_TEMPLATE},
        ]

    folder = derive_model("tiny-llama", tmp_path / "m", tokenizer_config=only_tool_use)
    tokenizer = load_tokenizer(str(folder))
    template = ChatTemplate.for_tokenizer(tokenizer, None)
    assert template.render(tokenizer, CHAT, tools=TOOLS) == "P[1]:Hello there"
    with pytest.raises(OpenAIError) as info:
        template.render(tokenizer, CHAT)
    assert info.value.param == "chat_template"
    assert "tool_use" in str(info.value)


def _engine(folder: Path, **kwargs: Any) -> AsyncEngineArgs:
    return AsyncEngineArgs(
        model=str(folder), device="cpu", max_model_len=128, kv_cache_memory_gib=0.01, **kwargs
    )


def test_no_chat_template_refuses_chat_but_serves_completions(tmp_path: Path) -> None:
    def without(config: dict[str, Any]) -> None:
        config.pop("chat_template")

    folder = derive_model("tiny-llama", tmp_path / "m", tokenizer_config=without)
    app = build_app(_engine(folder, served_model_name="plain"), ServerArgs())
    with TestClient(app) as client:
        chat = client.post(
            "/v1/chat/completions",
            json={"model": "plain", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert chat.status_code == 400
        error = chat.json()["error"]
        assert "--chat-template" in error["message"] and error["param"] == "chat_template"
        completion = client.post(
            "/v1/completions", json={"model": "plain", "prompt": "Hello", "max_tokens": 3}
        )
        assert completion.status_code == 200
        assert completion.json()["usage"]["completion_tokens"] >= 1


def test_several_served_names_and_a_template_file(tmp_path: Path, monkeypatch) -> None:
    """`mono-llm serve ~/m/ --served-model-name first second` with chat_template.jinja."""
    monkeypatch.setenv("HOME", str(tmp_path))

    def without(config: dict[str, Any]) -> None:
        config.pop("chat_template")

    derive_model(
        "tiny-llama",
        tmp_path / "m",
        tokenizer_config=without,
        write={"chat_template.jinja": STRING_TEMPLATE},
    )
    args = build_parser().parse_args(
        ["serve", "~/m/", "--served-model-name", "first", "second", "--device", "cpu",
         "--max-model-len", "128", "--kv-cache-memory-gib", "0.01"]
    )  # fmt: skip
    engines, aliases = engine_args_list(args)
    assert aliases == [["second"]]
    app = build_app(engines, ServerArgs(), served_model_aliases=aliases)
    with TestClient(app) as client:
        listed = [card["id"] for card in client.get("/v1/models").json()["data"]]
        assert listed == ["first", "second"]
        body = {
            "model": "second",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2,
        }
        chat = client.post("/v1/chat/completions", json=body)
        assert chat.status_code == 200, chat.text
        assert chat.json()["model"] == "first"  # the first name is the one reported
        tokens = client.post("/tokenize", json={"model": "first", "messages": body["messages"]})
        assert tokens.status_code == 200, tokens.text
        prompt = load_tokenizer(str(tmp_path / "m")).decode(tokens.json()["tokens"])
        assert prompt.endswith("S:hi")


def test_unsupported_architecture_is_a_one_line_cli_error(tmp_path: Path, capsys) -> None:
    folder = derive_model(
        "tiny-llama",
        tmp_path / "m",
        config=lambda c: c.update(architectures=["MambaForCausalLM"], model_type="mamba"),
    )
    assert main(["serve", str(folder)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err
    assert "MambaForCausalLM" in lines[0] and "LlamaForCausalLM" in lines[0]
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["MambaForCausalLM"]


def test_missing_tokenizer_is_a_one_line_cli_error(tmp_path: Path, capsys) -> None:
    tokenizer_files = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
    folder = derive_model("tiny-llama", tmp_path / "m", remove=tokenizer_files)
    assert main(["serve", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "has no tokenizer files" in err and "--tokenizer" in err and "Traceback" not in err
    assert main(["serve", str(folder), "--tokenizer", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
