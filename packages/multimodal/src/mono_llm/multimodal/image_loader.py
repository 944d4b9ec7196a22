"""From an image URL to model inputs: fetch, hash, decode, process, with a cache in between."""

from __future__ import annotations

import asyncio
import dataclasses

from PIL import Image

from mono_llm.multimodal.decode import decode_image, image_content_hash
from mono_llm.multimodal.image_cache import ProcessedImageCache
from mono_llm.multimodal.media_config import MediaConfig
from mono_llm.multimodal.media_url import fetch_image_bytes, run_sync
from mono_llm.multimodal.processors.base import ImageProcessor, ProcessedImage


class ImageLoader:
    """Loads images for one model: `await loader.load(url)` returns a `ProcessedImage`
    carrying its pixel values, placeholder-token count and content hash.

    Fetching is async (network I/O on the event loop); decoding and processing run in a
    worker thread so a large image never stalls the server's loop. A repeated image (same
    bytes) skips decoding and processing through the cache; an http URL is fetched again
    each time, since the server behind it may change what it serves.
    """

    def __init__(
        self,
        processor: ImageProcessor,
        config: MediaConfig | None = None,
        cache: ProcessedImageCache | None = None,
    ) -> None:
        self.processor = processor
        self.config = config or MediaConfig()
        self.cache = cache if cache is not None else ProcessedImageCache()

    async def load(self, url: str) -> ProcessedImage:
        data = await fetch_image_bytes(url, self.config)
        return await self.load_bytes(data)

    async def load_bytes(self, data: bytes) -> ProcessedImage:
        # Hashing 20 MB takes ~10 ms: in the worker thread too, with decoding and processing.
        return await asyncio.to_thread(self.load_bytes_sync, data)

    def load_bytes_sync(self, data: bytes) -> ProcessedImage:
        """Hash, then decode and process unless the cache has this image already."""
        digest = image_content_hash(data)
        cached = self.cache.get(digest, self.processor.fingerprint)
        if cached is not None:
            return cached
        image = decode_image(data, max_pixels=self.config.max_image_pixels)
        processed = self.process_image(image, digest)
        self.cache.put(self.processor.fingerprint, processed)
        return processed

    def load_sync(self, url: str) -> ProcessedImage:
        """`load` for callers without a running event loop."""
        return run_sync(self.load(url))

    def process_image(self, image: Image.Image, content_hash: str = "") -> ProcessedImage:
        """Process an already decoded image (offline API callers that hold PIL images)."""
        return dataclasses.replace(self.processor(image), content_hash=content_hash)
