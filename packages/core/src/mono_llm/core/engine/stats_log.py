"""The engine's periodic load line, shared by the thread and the process step loops."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mono_llm.core.engine.core import EngineCore

STATS_LOG_INTERVAL_S = 10.0


class PeriodicStatsLog:
    """Logs running/waiting requests, KV cache use and prefix hits at most once per interval,
    and only while the engine has work (an idle server stays quiet)."""

    def __init__(self, logger: logging.Logger, interval_s: float = STATS_LOG_INTERVAL_S) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._last = time.monotonic()

    def maybe_log(self, engine: EngineCore) -> None:
        if engine.config.disable_log_stats or not engine.has_unfinished_requests():
            return
        now = time.monotonic()
        if now - self._last < self._interval_s:
            return
        self._last = now
        stats = engine.get_stats()
        self._logger.info(
            "running %d, waiting %d, KV cache %.1f%%, prefix hits %d/%d tokens",
            stats.num_running_reqs,
            stats.num_waiting_reqs,
            100 * stats.kv_cache_usage,
            stats.prefix_cache_hits,
            stats.prefix_cache_queries,
        )
