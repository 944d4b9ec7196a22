"""image_url chat end to end: a real uvicorn server with tiny-llava and tiny-qwen2-vl (and the
text-only tiny-llama), the real `openai` client, and local HTTP servers serving the images.

The server runs as `mono-llm serve ... --allowed-media-domains 127.0.0.1
--allowed-local-media-path <dir> --max-image-bytes 60000 --limit-mm-per-prompt '{"image": 2}'`.
Covers vLLM's documented image chat example (http URL, data: URL, streamed), several images
per message and conversation, greedy output equal to transformers on the same image, and the
refusals: oversized image, non-image body, unreachable URL, a redirect into a loopback address
the server may not reach, file:// outside the allowed folder, too many images, an image for a
text-only model; none is fetched, and the server stays healthy.
"""

from __future__ import annotations

import base64
import http.server
import io
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import httpx
import numpy as np
import openai
import pytest
import torch

from tests.conftest import free_port

pytest.importorskip("mono_llm.multimodal.image_loader")  # the [multimodal] extra
Image = pytest.importorskip("PIL.Image")
transformers = pytest.importorskip("transformers")

LLAVA, QWEN_VL, TEXT_ONLY = "tiny-llava", "tiny-qwen2-vl", "tiny-llama"
MAX_IMAGE_BYTES = 60_000


def png_bytes(seed: int, size: tuple[int, int]) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


class _Media(http.server.BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, tuple[int, dict[str, str], bytes]]] = {}
    hits: list[str]

    def do_GET(self) -> None:
        self.hits.append(self.path)
        status, headers, body = self.routes.get(self.path, (404, {}, b"not found"))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _http_server(routes: dict[str, tuple[int, dict[str, str], bytes]]) -> Any:
    handler = type("Handler", (_Media,), {"routes": routes, "hits": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    cat = png_bytes(0, (90, 70))
    # A server the model server must never reach: only the redirect below points at it.
    forbidden = _http_server({"/secret.png": (200, {"Content-Type": "image/png"}, cat)})
    secret_url = f"http://localhost:{forbidden.server_port}/secret.png"
    routes = {
        "/cat.png": (200, {"Content-Type": "image/png"}, cat),
        "/dog.png": (200, {"Content-Type": "image/png"}, png_bytes(1, (60, 120))),
        "/huge.png": (200, {"Content-Type": "image/png"}, png_bytes(2, (400, 400))),
        "/page.html": (200, {"Content-Type": "text/html"}, b"<html>not an image</html>"),
        "/to-private": (302, {"Location": secret_url}, b""),
    }
    assert len(routes["/huge.png"][2]) > MAX_IMAGE_BYTES
    server = _http_server(routes)
    folder = tmp_path_factory.mktemp("allowed")
    (folder / "cat.png").write_bytes(cat)
    outside = tmp_path_factory.mktemp("outside") / "cat.png"
    outside.write_bytes(cat)
    yield {
        "base": f"http://127.0.0.1:{server.server_port}",
        "hits": server.RequestHandlerClass.hits,
        "forbidden_hits": forbidden.RequestHandlerClass.hits,
        "folder": folder,
        "outside": outside,
        "cat": cat,
    }
    server.shutdown()
    forbidden.shutdown()


@pytest.fixture(scope="module")
def vision_server(server_factory: Any, media: dict[str, Any]) -> Iterator[Any]:
    from mono_llm.core.config import AsyncEngineArgs
    from mono_llm.core.testing import fixture_path
    from mono_llm.openai_api import build_app
    from mono_llm.openai_api.server_state import ServerArgs

    engines = [
        AsyncEngineArgs(
            model=str(fixture_path(name)),
            served_model_name=name,
            limit_mm_per_prompt={"image": 2},
            max_num_batched_tokens=32,  # prefill chunks cut through image spans
        )
        for name in (LLAVA, QWEN_VL, TEXT_ONLY)
    ]
    args = ServerArgs(
        allowed_media_domains=["127.0.0.1"],
        allowed_local_media_path=str(media["folder"]),
        max_image_bytes=MAX_IMAGE_BYTES,
        media_fetch_timeout=10.0,
    )
    with server_factory(build_app(engines, args)) as running:
        yield running


def ask(client: Any, model: str, content: list[dict[str, Any]], **kwargs: Any) -> Any:
    kwargs.setdefault("max_tokens", 8)
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], temperature=0.0, **kwargs
    )


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


@pytest.mark.parametrize("model", [LLAVA, QWEN_VL])
def test_vllm_docs_image_chat_example(vision_server, media, model: str) -> None:
    """vLLM's documented vision chat example, with the image from a local HTTP server, the
    same image as a data: URL, and streamed: all three give the same greedy reply."""
    client = vision_server.openai()
    image_url = f"{media['base']}/cat.png"
    chat_response = client.chat.completions.create(
        model=model,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What's in this image?"},
                    {"type": "image_url", "image_url": {"url": image_url, "detail": "high"}},
                ],
            }
        ],
        max_tokens=8,
        temperature=0.0,
    )
    reply = chat_response.choices[0].message.content
    assert reply and chat_response.choices[0].finish_reason == "length"
    content = [
        {"type": "text", "text": "What's in this image?"},
        {"type": "image_url", "image_url": {"url": data_url(media["cat"])}},
    ]
    by_data = ask(client, model, content)
    assert by_data.choices[0].message.content == reply
    assert by_data.usage.prompt_tokens == chat_response.usage.prompt_tokens
    stream = ask(client, model, content, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == reply and chunks[-1].usage.prompt_tokens == by_data.usage.prompt_tokens
    # /tokenize with the same messages counts the image tokens the engine saw.
    counted = httpx.post(
        f"{vision_server.base_url}/tokenize",
        json={"model": model, "messages": [{"role": "user", "content": content}]},
    ).json()
    assert counted["count"] == by_data.usage.prompt_tokens > 16


def test_llava_reply_equals_transformers_on_the_same_image(vision_server, media) -> None:
    """The served reply is what transformers generates from the same token ids (as /tokenize
    reports them, image tokens expanded) and the pixel values of its own processor."""
    from mono_llm.core.testing import fixture_path

    content = [
        {"type": "image_url", "image_url": {"url": f"{media['base']}/cat.png"}},
        {"type": "text", "text": "Describe."},
    ]
    tokens = httpx.post(
        f"{vision_server.base_url}/tokenize",
        json={"model": LLAVA, "messages": [{"role": "user", "content": content}]},
    ).json()["tokens"]
    path = fixture_path(LLAVA)
    processor = transformers.AutoProcessor.from_pretrained(path)
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    image = Image.open(io.BytesIO(media["cat"])).convert("RGB")
    pixel_values = processor.image_processor(images=image, return_tensors="pt")["pixel_values"]
    input_ids = torch.tensor([tokens])
    assert tokens.count(hf.config.image_token_id) == 16
    with torch.no_grad():
        out = hf.eval().generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            pixel_values=pixel_values,
            max_new_tokens=8,
            do_sample=False,
        )
    expected = processor.tokenizer.decode(out[0, len(tokens) :], skip_special_tokens=True)
    reply = ask(vision_server.openai(), LLAVA, content, extra_body={"ignore_eos": True})
    assert reply.choices[0].message.content == expected


@pytest.mark.parametrize("model", [LLAVA, QWEN_VL])
def test_several_images_per_message_and_conversation(vision_server, media, model: str) -> None:
    client = vision_server.openai()
    cat = {"type": "image_url", "image_url": {"url": f"{media['base']}/cat.png"}}
    dog = {"type": "image_url", "image_url": {"url": data_url(png_bytes(1, (60, 120)))}}
    one_message = [cat, {"type": "text", "text": "and"}, dog, {"type": "text", "text": "?"}]
    first = ask(client, model, one_message)
    swapped = ask(
        client, model, [dog, {"type": "text", "text": "and"}, cat, {"type": "text", "text": "?"}]
    )
    assert first.choices[0].message.content and swapped.choices[0].message.content
    conversation = client.chat.completions.create(
        model=model,
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Look:"}, cat]},
            {"role": "assistant", "content": "I see it."},
            {"role": "user", "content": [dog, {"type": "text", "text": "And this?"}]},
        ],
        max_tokens=4,
        temperature=0.0,
    )
    assert conversation.choices[0].message.content
    both = ask(client, model, one_message, n=2)  # two candidates share the prompt's images
    assert len(both.choices) == 2
    assert both.choices[0].message.content == both.choices[1].message.content
    assert both.choices[0].message.content == first.choices[0].message.content
    local_file = {"type": "image_url", "image_url": {"url": (media["folder"] / "cat.png").as_uri()}}
    by_file = ask(client, model, [{"type": "text", "text": "What's in this image?"}, local_file])
    by_http = ask(client, model, [{"type": "text", "text": "What's in this image?"}, cat])
    assert by_file.choices[0].message.content == by_http.choices[0].message.content


def test_bad_images_are_clear_400s_and_the_server_stays_healthy(vision_server, media) -> None:
    client = vision_server.openai()
    base = media["base"]
    cases = {
        "oversized": (f"{base}/huge.png", "MAX"),
        "not an image": (f"{base}/page.html", ""),
        "unreachable": (f"http://127.0.0.1:{free_port()}/cat.png", ""),
        "redirect to a private address": (f"{base}/to-private", "localhost"),
        "file outside the allowed folder": (media["outside"].as_uri(), ""),
        "file with no folder allowed to it": ("file:///etc/passwd", ""),
        "bad data URL": ("data:image/png;base64,@@@@", ""),
        "no scheme": ("cat.png", ""),
    }
    for name, (url, needle) in cases.items():
        content = [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": url}}]
        with pytest.raises(openai.BadRequestError) as info:
            ask(client, LLAVA, content)
        message = info.value.message
        assert "image" in message.lower() or "url" in message.lower(), (name, message)
        if needle == "MAX":
            assert str(MAX_IMAGE_BYTES) in message or "large" in message.lower(), message
        elif needle:
            assert needle in message, (name, message)
        assert info.value.body["param"] == "messages", name
    assert media["forbidden_hits"] == []  # the redirect target was never contacted
    cat = {"type": "image_url", "image_url": {"url": f"{base}/cat.png"}}
    with pytest.raises(openai.BadRequestError, match=r"At most 2 image"):
        ask(client, LLAVA, [cat, cat, cat, {"type": "text", "text": "three"}])
    hits_before = list(media["hits"])
    with pytest.raises(openai.BadRequestError, match="text-only"):
        ask(client, TEXT_ONLY, [{"type": "text", "text": "hi"}, cat])
    assert media["hits"] == hits_before  # refused before fetching anything
    assert httpx.get(f"{vision_server.base_url}/health").status_code == 200
    ok = ask(client, LLAVA, [{"type": "text", "text": "still fine?"}, cat])
    assert ok.choices[0].message.content
