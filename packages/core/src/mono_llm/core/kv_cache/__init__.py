"""Paged KV cache bookkeeping: block pool, block tables and automatic prefix caching."""

from mono_llm.core.kv_cache.block_pool import BlockPool
from mono_llm.core.kv_cache.manager import KVCacheManager, hash_block

__all__ = ["BlockPool", "KVCacheManager", "hash_block"]
