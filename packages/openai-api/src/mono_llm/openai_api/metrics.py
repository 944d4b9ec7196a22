"""Prometheus metrics for GET /metrics.

Every metric is exported twice, as `mono_llm:<name>` and as vLLM's `vllm:<name>`, with a
`model_name` label: dashboards and alerts written for vLLM keep working unchanged, and
mono-llm's own names are there for new ones. Latency histograms are measured in the API
process as outputs reach it (what a client experiences); load gauges (running and waiting
requests, KV cache usage) are read from each engine at scrape time, so they cannot go stale.
Each app has its own registry, so several apps in one process (tests, Ray Serve replicas)
never share or clash over counters.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mono_llm.core.outputs import RequestOutput

PREFIXES = ("mono_llm", "vllm")

# Bucket edges in seconds, the same as vLLM's so histograms compare bucket by bucket.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
               10.0, 20.0, 40.0, 80.0)  # fmt: skip
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
               120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)


class _Both:
    """One metric under both prefixes, updated together."""

    def __init__(self, factory: Callable[[str], Any]) -> None:
        self.metrics = [factory(prefix) for prefix in PREFIXES]
        self._children: dict[tuple[tuple[str, str], ...], _Both] = {}

    def labels(self, **labels: str) -> _Both:
        # Cached: looking children up is per token on the inter-token-latency path.
        key = tuple(sorted(labels.items()))
        child = self._children.get(key)
        if child is None:
            child = _Both.__new__(_Both)
            child.metrics = [m.labels(**labels) for m in self.metrics]
            child._children = {}
            self._children[key] = child
        return child

    def inc(self, amount: float = 1.0) -> None:
        for m in self.metrics:
            m.inc(amount)

    def observe(self, value: float) -> None:
        for m in self.metrics:
            m.observe(value)


# (metric name, family, help text, the engine stats field it reads)
_ENGINE_STATS: tuple[tuple[str, type[Metric], str, str], ...] = (
    ("num_requests_running", GaugeMetricFamily, "Requests in model execution batches.",
     "num_running_reqs"),
    ("num_requests_waiting", GaugeMetricFamily, "Requests waiting to be scheduled.",
     "num_waiting_reqs"),
    ("kv_cache_usage_perc", GaugeMetricFamily, "Fraction of KV cache blocks in use (1 = full).",
     "kv_cache_usage"),
    ("num_preemptions", CounterMetricFamily, "Requests preempted by the scheduler (cumulative).",
     "num_preemptions"),
    ("prefix_cache_queries", CounterMetricFamily,
     "Prompt tokens looked up in the prefix cache (cumulative).", "prefix_cache_queries"),
    ("prefix_cache_hits", CounterMetricFamily,
     "Prompt tokens found in the prefix cache (cumulative).", "prefix_cache_hits"),
)  # fmt: skip


class _EngineStatsCollector(Collector):
    """Load gauges read from every served engine's `get_stats()` at scrape time."""

    def __init__(self, engines: Callable[[], list[tuple[str, Any]]]) -> None:
        self._engines = engines

    def collect(self) -> Iterator[Metric]:
        families = {
            (prefix, name): kind(f"{prefix}:{name}", documentation, labels=["model_name"])
            for prefix in PREFIXES
            for name, kind, documentation, _ in _ENGINE_STATS
        }
        for model_name, engine in self._engines():
            try:
                stats = engine.get_stats()
            except Exception:  # a dead engine still lets the others be scraped
                continue
            for name, _, _, field in _ENGINE_STATS:
                for prefix in PREFIXES:
                    families[prefix, name].add_metric([model_name], getattr(stats, field))
        yield from families.values()


class RequestTimer:
    """Follows one engine request's outputs and records its latencies and token counts."""

    def __init__(self, metrics: ServerMetrics, model_name: str) -> None:
        self._metrics = metrics
        self._model = model_name
        self._start = time.monotonic()
        self._last: float | None = None
        self._generated = 0
        self._prompt_tokens = 0
        self._done = False

    def observe(self, output: RequestOutput) -> None:
        now = time.monotonic()
        self._prompt_tokens = len(output.prompt_token_ids)
        new_tokens = sum(len(o.token_ids) for o in output.outputs)
        m = self._metrics
        if new_tokens:
            if self._last is None:
                m.time_to_first_token.labels(model_name=self._model).observe(now - self._start)
                # The first output may carry several tokens (n > 1): the rest are decode steps.
                later = new_tokens - 1
            else:
                later = new_tokens
            if later > 0 and self._last is not None:
                per_token = (now - self._last) / later
                itl = m.inter_token_latency.labels(model_name=self._model)
                for _ in range(later):
                    itl.observe(per_token)
            self._last = now
            self._generated += new_tokens
        if output.finished and not self._done:
            self._done = True
            reasons = {o.finish_reason for o in output.outputs if o.finish_reason}
            reason = "abort" if "abort" in reasons else (sorted(reasons)[0] if reasons else "stop")
            self._finish(now, reason)

    def aborted(self) -> None:
        if not self._done:
            self._done = True
            self._finish(time.monotonic(), "abort")

    def _finish(self, now: float, reason: str) -> None:
        m = self._metrics
        labels = {"model_name": self._model}
        m.e2e_latency.labels(**labels).observe(now - self._start)
        m.request_success.labels(finished_reason=reason, **labels).inc()
        m.prompt_tokens.labels(**labels).inc(self._prompt_tokens)
        m.generation_tokens.labels(**labels).inc(self._generated)
        m.request_prompt_tokens.labels(**labels).observe(self._prompt_tokens)
        m.request_generation_tokens.labels(**labels).observe(self._generated)


class ServerMetrics:
    """The registry behind GET /metrics."""

    def __init__(self, engines: Callable[[], list[tuple[str, Any]]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        label = ["model_name"]

        def counter(name: str, documentation: str, *extra_labels: str) -> _Both:
            labels = [*label, *extra_labels]
            return _Both(lambda p: Counter(f"{p}:{name}", documentation, labels, registry=reg))

        def histogram(name: str, documentation: str, buckets: tuple[float, ...]) -> _Both:
            return _Both(
                lambda p: Histogram(
                    f"{p}:{name}", documentation, label, buckets=buckets, registry=reg
                )
            )

        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens processed.")
        self.generation_tokens = counter("generation_tokens", "Generated tokens.")
        self.request_success = counter(
            "request_success",
            "Finished requests, by finish reason (stop, length, abort).",
            "finished_reason",
        )
        self.time_to_first_token = histogram(
            "time_to_first_token_seconds",
            "Seconds from arrival to the first generated token.",
            TTFT_BUCKETS,
        )
        self.inter_token_latency = histogram(
            "inter_token_latency_seconds",
            "Seconds between consecutive generated tokens.",
            ITL_BUCKETS,
        )
        self.e2e_latency = histogram(
            "e2e_request_latency_seconds",
            "Seconds from arrival to the end of the request.",
            E2E_BUCKETS,
        )
        self.request_prompt_tokens = histogram(
            "request_prompt_tokens",
            "Prompt length of finished requests, in tokens.",
            TOKEN_BUCKETS,
        )
        self.request_generation_tokens = histogram(
            "request_generation_tokens",
            "Generated tokens of finished requests.",
            TOKEN_BUCKETS,
        )
        reg.register(_EngineStatsCollector(engines))

    def request_timer(self, model_name: str) -> RequestTimer:
        return RequestTimer(self, model_name)

    def render(self) -> bytes:
        return generate_latest(self.registry)
