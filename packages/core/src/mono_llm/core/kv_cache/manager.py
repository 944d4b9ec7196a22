"""Block tables of running sequences, and prefix-cache lookups by chained block hashes.

The hash of block i covers its tokens and the hash of block i-1, so equal hashes mean equal
whole prefixes, not just equal blocks. Only full blocks whose tokens are all computed are
registered, after the step that computed them: a block is never shared before its KV exists,
whatever order the model runner writes the cache in.

A block that covers part of a multimodal item's placeholder span also hashes that item's
content hash: placeholder tokens are equal for every image, their KV is not.
"""

from __future__ import annotations

import hashlib
from array import array

from mono_llm.core.engine.request import Sequence
from mono_llm.core.kv_cache.block_pool import BlockPool

_ROOT_HASH = b"mono-llm-kv-root"


def hash_block(
    parent_hash: bytes, token_ids: list[int], extra_keys: tuple[bytes, ...] = ()
) -> bytes:
    """Content hash of one full block chained to its prefix (blake2b: no crafted collisions
    between tenants, unlike Python's `hash`); `extra_keys` are the hashes of the multimodal
    items whose spans overlap the block."""
    digest = hashlib.blake2b(parent_hash, digest_size=16)
    digest.update(array("q", token_ids).tobytes())
    for key in extra_keys:
        digest.update(len(key).to_bytes(4, "little"))
        digest.update(key)
    return digest.digest()


def block_extra_keys(seq: Sequence, index: int, block_size: int) -> tuple[bytes, ...]:
    """Hashes of `seq`'s multimodal items that overlap its block `index`."""
    start, stop = index * block_size, (index + 1) * block_size
    return tuple(item.hash_bytes for item in seq.mm_items if item.overlaps(start, stop))


class KVCacheManager:
    """Allocates KV blocks to sequences and finds their cached prefixes."""

    def __init__(self, num_blocks: int, block_size: int, *, enable_caching: bool = True) -> None:
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.pool = BlockPool(num_blocks, enable_caching=enable_caching)
        self.block_tables: dict[str, list[int]] = {}
        self._num_registered: dict[str, int] = {}  # leading blocks already in the prefix cache
        self.prefix_cache_queries = 0  # tokens looked up (cumulative)
        self.prefix_cache_hits = 0  # tokens found (cumulative)

    # ------------------------------------------------------------------ queries
    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def usage(self) -> float:
        return self.pool.usage

    def block_table(self, seq: Sequence) -> list[int]:
        return self.block_tables.get(seq.seq_id, [])

    def num_blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ------------------------------------------------------------------ prefix cache
    def _extend_hashes(self, seq: Sequence, num_tokens: int) -> None:
        """Make sure `seq.block_hashes` covers every full block of its first `num_tokens`."""
        size = self.block_size
        hashes = seq.block_hashes
        items = seq.mm_items
        for index in range(len(hashes), num_tokens // size):
            parent = hashes[index - 1] if index else _ROOT_HASH
            block = seq.token_ids[index * size : (index + 1) * size]
            extra = block_extra_keys(seq, index, size) if items else ()
            hashes.append(hash_block(parent, block, extra))

    def find_cached_prefix(self, seq: Sequence) -> list[int]:
        """Blocks holding the longest cached prefix of `seq` (not yet taken).

        At least the last token is always left to compute, since its logits are needed.
        Requests asking for prompt logprobs bypass the cache: cached positions have no logits.
        """
        if not self.enable_caching or seq.wants_prompt_logprobs:
            return []
        lookup_tokens = seq.num_tokens - 1
        self._extend_hashes(seq, lookup_tokens)
        found: list[int] = []
        for block_hash in seq.block_hashes[: lookup_tokens // self.block_size]:
            block_id = self.pool.lookup(block_hash)
            if block_id is None:
                break
            found.append(block_id)
        return found

    def shared_prompt_blocks(self, leader: Sequence, seq: Sequence) -> list[int]:
        """The leader's full blocks inside the prompt `seq` shares with it (n > 1 without the
        prefix cache). The leader never writes those positions again, so sharing is safe."""
        table = self.block_tables.get(leader.seq_id)
        if table is None or leader.num_computed_tokens < seq.num_prompt_tokens:
            return []
        return table[: min(seq.num_prompt_tokens, seq.num_tokens - 1) // self.block_size]

    def record_lookup(self, num_tokens: int, num_hit_tokens: int) -> None:
        """Count an admitted sequence's lookup (failed admissions retry and must not count)."""
        self.prefix_cache_queries += num_tokens
        self.prefix_cache_hits += num_hit_tokens

    def cache_computed_blocks(self, seq: Sequence) -> None:
        """Register the full blocks whose tokens are now all in the KV cache."""
        if not self.enable_caching:
            return
        table = self.block_tables.get(seq.seq_id)
        if table is None:
            return
        num_full = min(seq.num_computed_tokens // self.block_size, len(table))
        start = self._num_registered.get(seq.seq_id, 0)
        if num_full <= start:
            return
        self._extend_hashes(seq, num_full * self.block_size)
        for index in range(start, num_full):
            self.pool.register(table[index], seq.block_hashes[index])
        self._num_registered[seq.seq_id] = num_full

    # ------------------------------------------------------------------ allocation
    def allocate(
        self, seq: Sequence, num_new_tokens: int, cached_blocks: list[int] | None = None
    ) -> bool:
        """Give `seq` blocks for `num_new_tokens` more tokens (after any cached prefix).

        Returns False, changing nothing, when not enough blocks are free; the scheduler then
        preempts or waits.
        """
        table = self.block_tables.get(seq.seq_id)
        # Fast path (most decode steps): the new tokens fit the last block's free slots.
        if (
            not cached_blocks
            and table is not None
            and seq.num_computed_tokens + num_new_tokens <= len(table) * self.block_size
        ):
            return True
        cached_blocks = cached_blocks or []
        if table is None:
            table = []
        num_computed = seq.num_computed_tokens + len(cached_blocks) * self.block_size
        needed = (
            self.num_blocks_for(num_computed + num_new_tokens) - len(table) - len(cached_blocks)
        )
        # Cached blocks sitting in the free list stop being free once taken.
        revived = sum(1 for block_id in cached_blocks if self.pool.is_free(block_id))
        if max(needed, 0) + revived > self.pool.num_free_blocks:
            return False
        if cached_blocks:
            self.pool.take(cached_blocks)
            table.extend(cached_blocks)
            self._num_registered[seq.seq_id] = len(table)
        if needed > 0:
            table.extend(self.pool.allocate(needed))
        self.block_tables[seq.seq_id] = table
        return True

    def free(self, seq: Sequence) -> None:
        """Release all of `seq`'s blocks (finish, abort or preemption)."""
        table = self.block_tables.pop(seq.seq_id, None)
        self._num_registered.pop(seq.seq_id, None)
        if table:
            self.pool.free(reversed(table))

    def reset_prefix_cache(self) -> bool:
        return self.pool.reset_prefix_cache()
