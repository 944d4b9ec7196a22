"""Physical KV cache blocks: reference counts, a free list in LRU order, and the prefix cache.

A block whose reference count drops to zero goes to the free list but keeps its hash and
contents: until it is reallocated, a later request with the same prefix can take it back
(a prefix-cache hit). Allocation takes blocks from the front of the free list, so the least
recently freed cached blocks are evicted first; blocks without a hash are put at the front
when freed because nobody can ever hit them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable


class BlockPool:
    """Owns `num_blocks` block ids; the model runner owns the tensors they index."""

    def __init__(self, num_blocks: int, *, enable_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError(f"a KV cache needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.ref_counts = [0] * num_blocks
        self.block_hashes: list[bytes | None] = [None] * num_blocks
        # Free block ids in eviction order (front = evicted first); values unused.
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self._cached: dict[bytes, int] = {}  # block hash -> block id holding that content

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by live sequences (free cached blocks count as free)."""
        return 1.0 - len(self._free) / self.num_blocks

    def allocate(self, count: int) -> list[int]:
        """Take `count` blocks off the free list (evicting their cached content)."""
        if count > len(self._free):
            raise RuntimeError(f"asked for {count} KV blocks, {len(self._free)} free")
        block_ids = []
        for _ in range(count):
            block_id, _ = self._free.popitem(last=False)
            self._evict(block_id)
            self.ref_counts[block_id] = 1
            block_ids.append(block_id)
        return block_ids

    def take(self, block_ids: Iterable[int]) -> None:
        """Add a reference to blocks found in the prefix cache (reviving free ones)."""
        for block_id in block_ids:
            if self.ref_counts[block_id] == 0:
                del self._free[block_id]
            self.ref_counts[block_id] += 1

    def free(self, block_ids: Iterable[int]) -> None:
        """Drop one reference per block; pass a sequence's blocks tail first, so that the
        end of a prefix is evicted before its beginning (beginnings are shared more)."""
        for block_id in block_ids:
            self.ref_counts[block_id] -= 1
            if self.ref_counts[block_id] == 0:
                self._free[block_id] = None
                if self.block_hashes[block_id] is None:
                    self._free.move_to_end(block_id, last=False)
            elif self.ref_counts[block_id] < 0:
                raise RuntimeError(f"KV block {block_id} freed more often than taken")

    def lookup(self, block_hash: bytes) -> int | None:
        return self._cached.get(block_hash)

    def register(self, block_id: int, block_hash: bytes) -> None:
        """Record that `block_id` holds the (fully computed) content hashed `block_hash`."""
        if not self.enable_caching or self.block_hashes[block_id] is not None:
            return
        if block_hash in self._cached:  # same content computed twice concurrently: keep first
            return
        self._cached[block_hash] = block_id
        self.block_hashes[block_id] = block_hash

    def is_free(self, block_id: int) -> bool:
        return self.ref_counts[block_id] == 0

    def reset_prefix_cache(self) -> bool:
        """Forget all cached content; only possible when no block is in use."""
        if len(self._free) != self.num_blocks:
            return False
        self._cached.clear()
        self.block_hashes = [None] * self.num_blocks
        return True

    def _evict(self, block_id: int) -> None:
        block_hash = self.block_hashes[block_id]
        if block_hash is not None:
            self.block_hashes[block_id] = None
            if self._cached.get(block_hash) == block_id:
                del self._cached[block_hash]
