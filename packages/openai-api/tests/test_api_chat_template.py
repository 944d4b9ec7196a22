"""Chat template handling: content-format detection, message normalisation, rendering."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from mono_llm.core.testing import fixture_path
from mono_llm.core.testing.chat_templates import CHATML, LLAMA3, MISTRAL
from mono_llm.openai_api.chat_template import (
    ChatTemplate,
    detect_content_format,
    load_chat_template,
    normalize_messages,
)
from mono_llm.openai_api.errors import OpenAIError


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(fixture_path("tiny-llama"))


def test_detects_list_of_parts_templates() -> None:
    assert detect_content_format(LLAMA3) == "openai"  # `is string` + selectattr on content
    assert detect_content_format(CHATML) == "openai"
    assert detect_content_format(MISTRAL) == "string"  # concatenates content as text
    looped = "{% for m in messages %}{% for part in m['content'] %}{{ part.text }}{% endfor %}{% endfor %}"
    assert detect_content_format(looped) == "openai"
    aliased = "{% for m in messages %}{% set c = m.content %}{% for p in c %}{{ p }}{% endfor %}{% endfor %}"
    assert detect_content_format(aliased) == "openai"
    assert detect_content_format("{{ messages[0]['content'] | trim }}") == "string"
    assert detect_content_format("{% broken") == "string"


def test_normalize_messages_for_each_format() -> None:
    parts = [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]
    assert normalize_messages(parts, "string")[0]["content"] == "a\nb"
    assert normalize_messages(parts, "openai")[0]["content"] == parts[0]["content"]
    plain = [{"role": "user", "content": "hi"}]
    assert normalize_messages(plain, "openai")[0]["content"] == [{"type": "text", "text": "hi"}]
    calls = [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]}]  # fmt: skip
    normalized = normalize_messages(calls, "string")[0]
    assert normalized["tool_calls"][0]["function"]["arguments"] == {"x": 1}
    assert normalized["content"] == ""
    with pytest.raises(OpenAIError) as info:
        normalize_messages(
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            "string",
        )
    assert info.value.param == "messages.0.content"


def test_render_uses_tokenizer_template_and_flags(tokenizer) -> None:
    template = ChatTemplate.for_tokenizer(tokenizer, None)
    assert template.content_format == "openai" and template.tokenizer_has_template
    messages = [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]
    with_prompt = template.render(tokenizer, messages)
    assert with_prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    without = template.render(tokenizer, messages, add_generation_prompt=False)
    assert without.endswith("hello<|eot_id|>")
    continued = template.render(
        tokenizer,
        [*messages, {"role": "assistant", "content": "Sure"}],
        add_generation_prompt=False,
        continue_final_message=True,
    )
    assert continued.endswith("Sure")
    with pytest.raises(OpenAIError):
        template.render(tokenizer, messages, continue_final_message=True)


def test_override_template_file_inline_and_kwargs(tokenizer, tmp_path: Path) -> None:
    inline = "{% for m in messages %}[{{ m['role'] }}:{{ m['content'] }}]{% endfor %}{{ greeting }}"
    assert load_chat_template(inline) == inline
    path = tmp_path / "template.jinja"
    path.write_text(inline)
    assert load_chat_template(str(path)) == inline
    with pytest.raises(ValueError):
        load_chat_template(str(tmp_path / "missing.jinja"))
    template = ChatTemplate.for_tokenizer(tokenizer, inline)
    assert template.content_format == "string"
    text = template.render(
        tokenizer,
        [{"role": "user", "content": [{"type": "text", "text": "x"}]}],
        add_generation_prompt=False,
        chat_template_kwargs={"greeting": "!", "messages": "ignored: reserved"},
    )
    assert text == "[user:x]!"


def test_tools_reach_the_template(tokenizer) -> None:
    inline = (
        "{% for t in tools %}<{{ t['function']['name'] }}>{% endfor %}{{ messages[0]['content'] }}"
    )
    template = ChatTemplate.for_tokenizer(tokenizer, inline)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    rendered = template.render(
        tokenizer, [{"role": "user", "content": "hi"}], tools=tools, add_generation_prompt=False
    )
    assert rendered == "<get_weather>hi"


def test_missing_template_is_a_clear_400(tokenizer) -> None:
    template = ChatTemplate(template=None, content_format="string", tokenizer_has_template=False)
    with pytest.raises(OpenAIError) as info:
        template.render(tokenizer, [{"role": "user", "content": "x"}])
    assert info.value.status == 400 and "--chat-template" in info.value.message


def test_template_errors_become_400(tokenizer) -> None:
    template = ChatTemplate.for_tokenizer(
        tokenizer, "{{ raise_exception('no system role') }}", "string"
    )
    with pytest.raises(OpenAIError) as info:
        template.render(tokenizer, [{"role": "user", "content": "x"}])
    assert info.value.status == 400 and "no system role" in info.value.message


def test_explicit_content_format_wins_over_detection(tokenizer) -> None:
    """--chat-template-content-format openai keeps list content even for a string-style
    request template (detection would have flattened it to a string)."""
    chat = ChatTemplate.for_tokenizer(tokenizer, None, "openai")
    chat.trust_request_template = True
    string_style = "{% for m in messages %}{{ m['content'] }}|{% endfor %}"
    messages = [{"role": "user", "content": "hi"}]
    rendered = chat.render(tokenizer, messages, request_template=string_style)
    assert "'type': 'text'" in rendered
    detected = ChatTemplate.for_tokenizer(tokenizer, None, "auto")
    detected.trust_request_template = True
    assert detected.render(tokenizer, messages, request_template=string_style) == "hi|"
