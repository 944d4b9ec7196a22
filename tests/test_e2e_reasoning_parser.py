"""--reasoning-parser through the API: thinking split from the answer in chat (streamed and
not) and in the Responses API's reasoning items.

The fixture model has random weights, so a regex (structured outputs over the whole reply)
forces its output through a `<think>` block. The fixture tokenizer has the markers as
*special* tokens (real reasoning models have them as plain added tokens, which stay in the
text); a logit_bias keeps the model off those ids, so the markers are written in ordinary
tokens and survive detokenization.
"""

from __future__ import annotations

import json
import re

import pytest

QWEN3 = "tiny-qwen3"
THINK = r"<think>[a-z ]{8,30}</think>[a-z]{3,12}"
FORCED = {"structured_outputs": {"regex": THINK}}
MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture(scope="module")
def reasoning_server(server_factory):
    from mono_llm.core import AsyncEngineArgs
    from mono_llm.core.testing import fixture_path
    from mono_llm.openai_api import ServerArgs, build_app

    engine = AsyncEngineArgs(model=str(fixture_path(QWEN3)), served_model_name=QWEN3)
    # auto: the fixture's ChatML template shows no tool-call format (see the last test).
    args = ServerArgs(
        reasoning_parser="qwen3", enable_auto_tool_choice=True, tool_call_parser="auto"
    )
    with server_factory(build_app([engine], args)) as running:
        yield running


@pytest.fixture(scope="module", autouse=True)
def _plain_markers() -> None:
    from transformers import AutoTokenizer

    from mono_llm.core.testing import fixture_path

    tokenizer = AutoTokenizer.from_pretrained(fixture_path(QWEN3))
    marker_ids = tokenizer.convert_tokens_to_ids(["<think>", "</think>"])
    FORCED["logit_bias"] = {str(i): -100 for i in marker_ids}


def test_chat_splits_reasoning_streamed_and_not(reasoning_server) -> None:
    client = reasoning_server.openai()
    reply = client.chat.completions.create(
        model=QWEN3, messages=MESSAGES, max_tokens=80, temperature=0, extra_body=FORCED
    )
    message = reply.choices[0].message
    whole = re.fullmatch(r"<think>([a-z ]+)</think>([a-z]+)", "".join(
        [f"<think>{message.reasoning_content}</think>", message.content]))  # fmt: skip
    assert whole is not None and len(message.reasoning_content) >= 8
    assert message.model_extra["reasoning"] == message.reasoning_content
    assert "<think>" not in message.content

    chunks = list(
        client.chat.completions.create(
            model=QWEN3, messages=MESSAGES, max_tokens=80, temperature=0, extra_body=FORCED,
            stream=True,
        )
    )  # fmt: skip
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    thought = "".join(d.model_extra.get("reasoning_content") or "" for d in deltas)
    newer = "".join(d.model_extra.get("reasoning") or "" for d in deltas)
    content = "".join(d.content or "" for d in deltas)
    assert (thought, content) == (message.reasoning_content, message.content)
    assert newer == thought
    # Every reasoning delta comes before the first content delta.
    kinds = [("r" if d.model_extra.get("reasoning_content") else "c") for d in deltas
             if d.content or d.model_extra.get("reasoning_content")]  # fmt: skip
    assert kinds == sorted(kinds, reverse=True)


def test_thinking_switched_off_json_applies_at_once(reasoning_server) -> None:
    client = reasoning_server.openai()
    reply = client.chat.completions.create(
        model=QWEN3,
        messages=MESSAGES,
        max_tokens=200,
        temperature=0,
        response_format={"type": "json_object"},
        extra_body={
            "chat_template_kwargs": {"enable_thinking": False},
            "structured_outputs": {"disable_any_whitespace": True},
        },
    )
    message = reply.choices[0].message
    assert message.reasoning_content is None
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(message.content), dict)
    else:
        assert message.content.startswith("{")


def test_responses_reasoning_item_and_events(reasoning_server) -> None:
    client = reasoning_server.openai()
    response = client.responses.create(
        model=QWEN3, input="Why is the sky blue?", max_output_tokens=80, temperature=0,
        extra_body=FORCED,
    )  # fmt: skip
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and reasoning.id.startswith("rs_")
    thought = reasoning.content[0].text
    assert reasoning.content[0].type == "reasoning_text" and len(thought) >= 8
    assert message.type == "message" and re.fullmatch("[a-z]+", response.output_text)
    assert 0 < response.usage.output_tokens_details.reasoning_tokens < response.usage.output_tokens

    events = list(
        client.responses.create(
            model=QWEN3, input="Why is the sky blue?", max_output_tokens=80, temperature=0,
            extra_body=FORCED, stream=True,
        )
    )  # fmt: skip
    types = [e.type for e in events]
    first_text = types.index("response.output_text.delta")
    assert types[2:5] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
    ]
    done = types.index("response.reasoning_text.done")
    assert done < first_text
    assert types[done : done + 5] == [
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert events[done].text == thought
    assert events[-1].response.output_text == response.output_text


def test_auto_tool_parser_without_a_known_format_is_a_clear_400(reasoning_server) -> None:
    import openai

    client = reasoning_server.openai()
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with pytest.raises(openai.BadRequestError, match="--tool-call-parser") as info:
        client.chat.completions.create(model=QWEN3, messages=MESSAGES, tools=tools, max_tokens=2)
    assert info.value.body["param"] == "tool_choice"
    assert client.chat.completions.create(model=QWEN3, messages=MESSAGES, max_tokens=2).choices


@pytest.fixture(scope="module")
def r1_server(server_factory, tmp_path_factory):
    """tiny-qwen3 with `<think>`/`</think>` as plain added tokens (as in real reasoning models:
    they stay in the text), served with --reasoning-parser deepseek_r1."""
    import shutil

    from mono_llm.core import AsyncEngineArgs
    from mono_llm.core.testing import fixture_path
    from mono_llm.openai_api import ServerArgs, build_app

    folder = tmp_path_factory.mktemp("r1") / "model"
    shutil.copytree(fixture_path(QWEN3), folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        config = json.loads((folder / name).read_text())
        entries = config.get("added_tokens") or list(config["added_tokens_decoder"].values())
        for entry in entries:
            if entry["content"] in ("<think>", "</think>"):
                entry["special"] = False
        (folder / name).write_text(json.dumps(config, ensure_ascii=False))
    engine = AsyncEngineArgs(model=str(folder), served_model_name=QWEN3)
    with server_factory(build_app([engine], ServerArgs(reasoning_parser="deepseek_r1"))) as running:
        yield running


def test_json_applies_after_the_thinking(r1_server) -> None:
    """A bias makes `</think>` the model's first choice. If the JSON grammar applied from the
    first token it would forbid `</think>`, and the whole JSON would read as (unclosed)
    reasoning; gated until `</think>`, the thinking ends at once and the answer is the JSON.
    The schema holds no strings, so `</think>` cannot come back inside the answer."""
    from transformers import AutoTokenizer

    client = r1_server.openai()
    tokenizer = AutoTokenizer.from_pretrained(
        r1_server.app.state.server.registry.resolve(QWEN3).root
    )
    bias = {str(i): 20 for i in range(len(tokenizer)) if tokenizer.decode([i]) == "}"}
    bias[str(tokenizer.convert_tokens_to_ids("</think>"))] = 100
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}  # fmt: skip
    for stream in (False, True):
        reply = client.chat.completions.create(
            model=QWEN3, messages=MESSAGES, max_tokens=50, temperature=0, stream=stream,
            response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
            extra_body={"logit_bias": bias, "structured_outputs": {"disable_any_whitespace": True}},
        )  # fmt: skip
        if stream:
            deltas = [c.choices[0].delta for c in reply if c.choices]
            content = "".join(d.content or "" for d in deltas)
            thought = "".join(d.model_extra.get("reasoning_content") or "" for d in deltas)
        else:
            content = reply.choices[0].message.content
            thought = reply.choices[0].message.reasoning_content
        assert thought in ("", None) and isinstance(json.loads(content)["n"], int), content
