"""Block pool reference counting, LRU eviction of cached blocks, and prefix-cache lookups."""

from __future__ import annotations

from mono_llm.core.engine.request import Sequence
from mono_llm.core.kv_cache import BlockPool, KVCacheManager
from mono_llm.core.sampling_params import SamplingParams


def _seq(seq_id: str, tokens: list[int], **params) -> Sequence:
    return Sequence(
        seq_id, seq_id, 0, tokens, sampling_params=SamplingParams(**params), max_tokens=10
    )


def test_block_pool_refcounts_and_lru_eviction() -> None:
    pool = BlockPool(4)
    a, b = pool.allocate(2)
    pool.register(a, b"ha")
    pool.register(b, b"hb")
    pool.take([a])  # shared by a second sequence
    pool.free([b, a])  # first sequence done (tail first)
    assert pool.num_free_blocks == 3  # a still held once
    assert pool.lookup(b"hb") == b
    pool.free([a])
    assert pool.num_free_blocks == 4 and pool.lookup(b"ha") == a
    # Unhashed free blocks are reused before cached ones; then the least recently freed.
    first_two = pool.allocate(2)
    assert b not in first_two and a not in first_two
    third = pool.allocate(1)[0]
    assert third == b and pool.lookup(b"hb") is None  # evicted
    assert pool.lookup(b"ha") == a
    pool.take([a])  # revive a cached free block
    assert pool.num_free_blocks == 0


def test_manager_prefix_hits_share_blocks_and_leave_last_token() -> None:
    manager = KVCacheManager(num_blocks=10, block_size=4)
    first = _seq("a", list(range(10)))
    assert manager.find_cached_prefix(first) == []
    assert manager.allocate(first, 10)
    first.num_computed_tokens = 10
    manager.cache_computed_blocks(first)  # 2 full blocks registered
    assert manager.num_free_blocks == 7

    same_prefix = _seq("b", [*list(range(8)), 99, 98])
    cached = manager.find_cached_prefix(same_prefix)
    assert cached == manager.block_table(first)[:2]
    assert manager.allocate(same_prefix, 2, cached)
    assert manager.block_table(same_prefix)[:2] == manager.block_table(first)[:2]
    assert manager.num_free_blocks == 6  # only one new block

    # A prompt that is exactly the cached blocks still computes its last token.
    exact = _seq("c", list(range(8)))
    assert len(manager.find_cached_prefix(exact)) == 1
    # Different first block: the chained hash differs for every later block too.
    other = _seq("d", [7, *list(range(1, 10))])
    assert manager.find_cached_prefix(other) == []

    manager.free(first)
    manager.free(same_prefix)
    assert manager.num_free_blocks == 10
    # Freed blocks stay cached until evicted.
    again = _seq("e", list(range(9)))
    assert len(manager.find_cached_prefix(again)) == 2


def test_prompt_logprobs_requests_bypass_the_cache() -> None:
    manager = KVCacheManager(num_blocks=4, block_size=4)
    seq = _seq("a", list(range(9)))
    manager.allocate(seq, 9)
    seq.num_computed_tokens = 9
    manager.cache_computed_blocks(seq)
    wants = _seq("b", list(range(9)), prompt_logprobs=1)
    assert manager.find_cached_prefix(wants) == []


def test_allocation_fails_cleanly_when_full() -> None:
    manager = KVCacheManager(num_blocks=3, block_size=4)
    seq = _seq("a", list(range(12)))
    assert not manager.allocate(seq, 13)  # 4 blocks needed
    assert manager.num_free_blocks == 3 and manager.block_table(seq) == []
    assert manager.allocate(seq, 12)
    assert manager.num_free_blocks == 0
