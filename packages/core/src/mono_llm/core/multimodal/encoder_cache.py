"""Encoder outputs (image embeddings) by item content hash, shared by the requests using them.

Chunked prefill may cut an image's placeholder span across steps; the vision tower runs once,
when the first chunk touching the span is scheduled, and later chunks read their rows from
here. An entry is held by every request that still has rows of it to compute, and released
when the request has computed the span's last row, or finishes, is aborted or fails. Held
entries are the working set of the running requests; released ones are kept, at most
`max_tokens` embeddings in all (least recently released dropped first), so a repeated image
skips the encoder; with `max_tokens=0` an entry is freed as soon as nobody holds it.
"""

from __future__ import annotations

from collections import OrderedDict

import torch


class EncoderCache:
    """content hash -> [num_tokens, hidden] embeddings, with per-request holds."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens  # embeddings kept for items no request holds
        self._entries: dict[str, torch.Tensor] = {}
        self._holders: dict[str, set[str]] = {}  # hash -> request ids holding it
        self._held: dict[str, set[str]] = {}  # request id -> hashes it holds
        self._released: OrderedDict[str, None] = OrderedDict()  # unheld entries, LRU first
        self._released_tokens = 0
        self.num_encoded = 0  # items run through the encoder (tests, metrics)
        self.num_hits = 0  # lookups served without running the encoder

    def __contains__(self, content_hash: str) -> bool:
        return content_hash in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def num_tokens(self) -> int:
        return sum(t.shape[0] for t in self._entries.values())

    def get(self, content_hash: str, request_id: str) -> torch.Tensor | None:
        """The cached output, now held by `request_id`; None when it must be encoded."""
        output = self._entries.get(content_hash)
        if output is None:
            return None
        self.num_hits += 1
        self.hold(content_hash, request_id)
        return output

    def put(self, content_hash: str, output: torch.Tensor, request_id: str) -> None:
        """Store a freshly encoded output, held by `request_id`."""
        self.num_encoded += 1
        self._entries[content_hash] = output
        self.hold(content_hash, request_id)

    def release(self, request_id: str, content_hash: str | None = None) -> None:
        """`request_id` no longer needs `content_hash` (or any of its entries when None)."""
        held = self._held.get(request_id)
        if not held:
            return
        hashes = [content_hash] if content_hash is not None else list(held)
        for digest in hashes:
            if digest not in held:
                continue
            held.discard(digest)
            holders = self._holders.get(digest)
            if holders is not None:
                holders.discard(request_id)
                if not holders:
                    del self._holders[digest]
                    self._park(digest)
        if not held:
            del self._held[request_id]

    def holders(self, content_hash: str) -> set[str]:
        return set(self._holders.get(content_hash, ()))

    def clear(self) -> None:
        self._entries.clear()
        self._holders.clear()
        self._held.clear()
        self._released.clear()
        self._released_tokens = 0

    def hold(self, content_hash: str, request_id: str) -> None:
        """Keep a cached entry until `request_id` releases it."""
        if content_hash in self._released:
            del self._released[content_hash]
            self._released_tokens -= self._entries[content_hash].shape[0]
        self._holders.setdefault(content_hash, set()).add(request_id)
        self._held.setdefault(request_id, set()).add(content_hash)

    def _park(self, content_hash: str) -> None:
        """Keep an unheld entry for reuse while it fits, evicting the oldest unheld ones."""
        size = self._entries[content_hash].shape[0]
        self._released[content_hash] = None
        self._released_tokens += size
        while self._released_tokens > self.max_tokens and self._released:
            oldest, _ = self._released.popitem(last=False)
            self._released_tokens -= self._entries.pop(oldest).shape[0]
