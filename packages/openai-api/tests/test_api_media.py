"""Image parts in chat messages and the image loader's refusals, without a server."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from mono_llm.openai_api.chat_template import normalize_messages
from mono_llm.openai_api.errors import OpenAIError
from mono_llm.openai_api.media import MediaInputs, check_image_count
from mono_llm.openai_api.server_state import ServerArgs


def _model(limits: dict[str, int]) -> SimpleNamespace:
    return SimpleNamespace(
        name="m",
        root="/nonexistent",
        engine=SimpleNamespace(model_config=SimpleNamespace(limit_mm_per_prompt=limits)),
    )


def test_image_parts_keep_their_order_and_collect_urls() -> None:
    content = [
        {"type": "image_url", "image_url": {"url": "http://a/1.png", "detail": "low"}},
        {"type": "text", "text": "between"},
        {"image_url": {"url": "http://a/2.png"}},  # type left out, as vLLM allows
        {"type": "image_url", "image_url": "http://a/3.png"},  # bare string form
    ]
    urls: list[str] = []
    (message,) = normalize_messages([{"role": "user", "content": content}], "openai", images=urls)
    assert urls == ["http://a/1.png", "http://a/2.png", "http://a/3.png"]
    assert [p["type"] for p in message["content"]] == ["image", "text", "image", "image"]
    urls = []
    (flat,) = normalize_messages(
        [{"role": "user", "content": content}], "string", images=urls, image_placeholder="<image>"
    )
    assert flat["content"] == "<image>\nbetween\n<image>\n<image>"
    with pytest.raises(OpenAIError) as info:
        normalize_messages(
            [{"role": "user", "content": [{"type": "image_url"}]}], "openai", images=[]
        )
    assert info.value.status == 400 and info.value.param == "messages.0.content.0.image_url.url"
    with pytest.raises(OpenAIError, match="text-only"):  # images=None: the model takes none
        normalize_messages([{"role": "user", "content": content}], "openai")


def test_image_counts_are_checked_before_fetching() -> None:
    check_image_count(_model({"image": 2}), 2)  # type: ignore[arg-type]
    with pytest.raises(OpenAIError, match=r"At most 2 image\(s\).*limit-mm-per-prompt"):
        check_image_count(_model({"image": 2}), 3)  # type: ignore[arg-type]
    with pytest.raises(OpenAIError, match="text-only"):
        check_image_count(_model({}), 1)  # type: ignore[arg-type]


def test_missing_extra_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mono_llm.multimodal", None)  # as if not installed
    with pytest.raises(OpenAIError) as info:
        MediaInputs(ServerArgs())._loader(_model({"image": 1}))  # type: ignore[arg-type]
    assert info.value.status == 400 and "pip install mono-llm[multimodal]" in info.value.message


def test_limit_mm_per_prompt_flag_takes_vllm_json() -> None:
    from mono_llm.core.config import EngineArgs
    from mono_llm.core.errors import InvalidRequestError
    from mono_llm.openai_api.cli import build_parser

    args = build_parser().parse_args(["serve", "/m", "--limit-mm-per-prompt", '{"image": 2}'])
    assert args.limit_mm_per_prompt == {"image": 2}
    assert EngineArgs(limit_mm_per_prompt='{"image": 3}').limit_mm_per_prompt == {"image": 3}
    assert EngineArgs(limit_mm_per_prompt="image=1").limit_mm_per_prompt == {"image": 1}
    with pytest.raises(InvalidRequestError, match="non-negative"):
        EngineArgs(limit_mm_per_prompt={"image": -1})
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "/m", "--limit-mm-per-prompt", "[1]"])


def test_media_server_flags_reach_server_args() -> None:
    from mono_llm.openai_api.cli import build_parser

    args = build_parser().parse_args(
        ["serve", "/m", "--allowed-media-domains", "127.0.0.1", "media.internal",
         "--allowed-local-media-path", "/srv/images", "--media-fetch-timeout", "5",
         "--max-image-bytes", "1000"]
    )  # fmt: skip
    server = ServerArgs(**{name: getattr(args, name) for name in args.server_fields})
    assert server.allowed_media_domains == ["127.0.0.1", "media.internal"]
    assert server.allowed_local_media_path == "/srv/images"
    assert (server.media_fetch_timeout, server.max_image_bytes) == (5.0, 1000)
