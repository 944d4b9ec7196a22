"""The loader end to end (URL to ProcessedImage) and its bounded content-hash cache."""

from __future__ import annotations

import asyncio
import base64

import pytest
import torch
from multimodal_helpers import LocalServer, Route, encode, make_image

from mono_llm.multimodal import (
    ImageDecodeError,
    ImageLoader,
    MediaConfig,
    MediaForbiddenError,
    MediaTooLargeError,
    ProcessedImage,
    ProcessedImageCache,
    Qwen2VLImageProcessor,
    image_content_hash,
)

QWEN = Qwen2VLImageProcessor({"min_pixels": 56 * 56, "max_pixels": 56 * 56 * 4})


class CountingProcessor:
    """Wraps a processor and counts how often it really runs."""

    def __init__(self, inner: Qwen2VLImageProcessor) -> None:
        self.inner = inner
        self.fingerprint = inner.fingerprint
        self.calls = 0

    def __call__(self, image):  # type: ignore[no-untyped-def]
        self.calls += 1
        return self.inner(image)

    def num_image_tokens(self, width: int, height: int) -> int:
        return self.inner.num_image_tokens(width, height)


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def test_load_from_http_and_data_url_share_the_cache(local_server: LocalServer) -> None:
    png = encode(make_image(120, 90, seed=4))
    local_server.routes["/a.png"] = Route(body=png, headers={"Content-Type": "image/png"})
    processor = CountingProcessor(QWEN)
    loader = ImageLoader(processor, MediaConfig(allowed_media_domains=("127.0.0.1",)))
    first = loader.load_sync(local_server.url("/a.png"))
    assert first.content_hash == image_content_hash(png)
    assert first.image_grid_thw == QWEN.grid_thw(120, 90)
    assert first.num_tokens == QWEN.num_image_tokens(120, 90)
    second = loader.load_sync(data_url(png))  # same bytes by another URL: a cache hit
    assert second is first
    assert processor.calls == 1 and loader.cache.hits == 1
    other = loader.load_sync(data_url(encode(make_image(120, 90, seed=5))))
    assert other.content_hash != first.content_hash
    assert not torch.equal(other.pixel_values, first.pixel_values)
    assert processor.calls == 2


def test_async_load_concurrently() -> None:
    images = [encode(make_image(60 + i, 60, seed=i)) for i in range(4)]
    loader = ImageLoader(QWEN)

    async def main() -> list[ProcessedImage]:
        return await asyncio.gather(*(loader.load(data_url(data)) for data in images))

    results = asyncio.run(main())
    assert [r.content_hash for r in results] == [image_content_hash(d) for d in images]


def test_image_content_type_with_a_non_image_body(local_server: LocalServer) -> None:
    local_server.routes["/fake.png"] = Route(
        body=b"<html>login page</html>", headers={"Content-Type": "image/png"}
    )
    loader = ImageLoader(QWEN, MediaConfig(allowed_media_domains=("127.0.0.1",)))
    with pytest.raises(ImageDecodeError, match="not a JPEG, PNG"):
        loader.load_sync(local_server.url("/fake.png"))


def test_pixel_limit_applies_through_the_loader() -> None:
    loader = ImageLoader(QWEN, MediaConfig(max_image_pixels=50 * 50))
    with pytest.raises(MediaTooLargeError, match="pixels"):
        loader.load_sync(data_url(encode(make_image(60, 50))))


def test_loader_errors_are_typed() -> None:
    loader = ImageLoader(QWEN)
    with pytest.raises(ImageDecodeError):
        loader.load_sync(data_url(b"definitely not an image"))
    with pytest.raises(MediaForbiddenError):
        loader.load_sync("http://127.0.0.1/x.png")
    assert len(loader.cache) == 0


def _entry(tag: str, numel: int) -> ProcessedImage:
    return ProcessedImage(pixel_values=torch.zeros(numel), num_tokens=1, content_hash=tag)


def test_cache_is_bounded_by_count_and_bytes() -> None:
    cache = ProcessedImageCache(max_items=2, max_bytes=10_000)
    cache.put("p", _entry("a", 10))
    cache.put("p", _entry("b", 10))
    assert cache.get("a", "p") is not None  # a is now the most recent
    cache.put("p", _entry("c", 10))  # evicts b, the least recently used
    assert cache.get("b", "p") is None and cache.get("a", "p") is not None
    assert len(cache) == 2
    cache.put("p", _entry("big", 2000))  # 8000 bytes: pushes the others out by bytes
    assert cache.nbytes <= 10_000 and cache.get("big", "p") is not None
    cache.put("p", _entry("huge", 5000))  # larger than the whole cache: not stored
    assert cache.get("huge", "p") is None
    assert cache.get("big", "q") is None  # another processor's entries are separate


def test_process_image_directly() -> None:
    loader = ImageLoader(QWEN)
    result = loader.process_image(make_image(56, 56), content_hash="abc")
    assert result.content_hash == "abc" and result.num_tokens == QWEN.num_image_tokens(56, 56)
