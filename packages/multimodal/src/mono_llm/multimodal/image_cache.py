"""A bounded LRU cache of processed images, keyed by content hash and processor."""

from __future__ import annotations

import threading
from collections import OrderedDict

from mono_llm.multimodal.processors.base import ProcessedImage


class ProcessedImageCache:
    """Keeps the most recently used processed images, bounded by count and by bytes.

    Keyed by (content hash of the encoded image, processor fingerprint), so the same image
    sent twice, by any URL, is decoded and processed once per processor. Thread-safe: the
    loader fills it from worker threads.
    """

    def __init__(self, max_items: int = 256, max_bytes: int = 512 * 1024 * 1024) -> None:
        if max_items < 0 or max_bytes < 0:
            raise ValueError("cache bounds must be >= 0")
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str], ProcessedImage] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, content_hash: str, processor_fingerprint: str) -> ProcessedImage | None:
        key = (content_hash, processor_fingerprint)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, processor_fingerprint: str, image: ProcessedImage) -> None:
        """Store `image` (its own content_hash is the key); entries over a bound are evicted
        oldest first, and an entry larger than max_bytes is not stored at all."""
        key = (image.content_hash, processor_fingerprint)
        size = image.nbytes
        with self._lock:
            if size > self.max_bytes or self.max_items == 0:
                return
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[key] = image
            self._bytes += size
            while len(self._entries) > self.max_items or self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
