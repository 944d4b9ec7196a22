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


class _EngineStatsCollector(Collector):
    """Load gauges read from every served engine's `get_stats()` at scrape time."""

    def __init__(self, engines: Callable[[], list[tuple[str, Any]]]) -> None:
        self._engines = engines

    def collect(self) -> Iterator[Metric]:
        families: list[Metric] = []
        for prefix in PREFIXES:
            running = GaugeMetricFamily(
                f"{prefix}:num_requests_running",
                "Requests in model execution batches.",
                labels=["model_name"],
            )
            waiting = GaugeMetricFamily(
                f"{prefix}:num_requests_waiting",
                "Requests waiting to be scheduled.",
                labels=["model_name"],
            )
            kv_usage = GaugeMetricFamily(
                f"{prefix}:kv_cache_usage_perc",
                "Fraction of KV cache blocks in use (1 = full).",
                labels=["model_name"],
            )
            preemptions = CounterMetricFamily(
                f"{prefix}:num_preemptions",
                "Requests preempted by the scheduler (cumulative).",
                labels=["model_name"],
            )
            prefix_queries = CounterMetricFamily(
                f"{prefix}:prefix_cache_queries",
                "Prompt tokens looked up in the prefix cache (cumulative).",
                labels=["model_name"],
            )
            prefix_hits = CounterMetricFamily(
                f"{prefix}:prefix_cache_hits",
                "Prompt tokens found in the prefix cache (cumulative).",
                labels=["model_name"],
            )
            for name, engine in self._engines():
                try:
                    stats = engine.get_stats()
                except Exception:  # a dead engine still lets the others be scraped
                    continue
                running.add_metric([name], stats.num_running_reqs)
                waiting.add_metric([name], stats.num_waiting_reqs)
                kv_usage.add_metric([name], stats.kv_cache_usage)
                preemptions.add_metric([name], stats.num_preemptions)
                prefix_queries.add_metric([name], stats.prefix_cache_queries)
                prefix_hits.add_metric([name], stats.prefix_cache_hits)
            families += [running, waiting, kv_usage, preemptions, prefix_queries, prefix_hits]
        yield from families


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
        self.prompt_tokens = _Both(
            lambda p: Counter(f"{p}:prompt_tokens", "Prompt tokens processed.", label, registry=reg)
        )
        self.generation_tokens = _Both(
            lambda p: Counter(f"{p}:generation_tokens", "Generated tokens.", label, registry=reg)
        )
        self.request_success = _Both(
            lambda p: Counter(
                f"{p}:request_success",
                "Finished requests, by finish reason (stop, length, abort).",
                [*label, "finished_reason"],
                registry=reg,
            )
        )
        self.time_to_first_token = _Both(
            lambda p: Histogram(
                f"{p}:time_to_first_token_seconds",
                "Seconds from arrival to the first generated token.",
                label,
                buckets=TTFT_BUCKETS,
                registry=reg,
            )
        )
        self.inter_token_latency = _Both(
            lambda p: Histogram(
                f"{p}:inter_token_latency_seconds",
                "Seconds between consecutive generated tokens.",
                label,
                buckets=ITL_BUCKETS,
                registry=reg,
            )
        )
        self.e2e_latency = _Both(
            lambda p: Histogram(
                f"{p}:e2e_request_latency_seconds",
                "Seconds from arrival to the end of the request.",
                label,
                buckets=E2E_BUCKETS,
                registry=reg,
            )
        )
        self.request_prompt_tokens = _Both(
            lambda p: Histogram(
                f"{p}:request_prompt_tokens",
                "Prompt length of finished requests, in tokens.",
                label,
                buckets=TOKEN_BUCKETS,
                registry=reg,
            )
        )
        self.request_generation_tokens = _Both(
            lambda p: Histogram(
                f"{p}:request_generation_tokens",
                "Generated tokens of finished requests.",
                label,
                buckets=TOKEN_BUCKETS,
                registry=reg,
            )
        )
        reg.register(_EngineStatsCollector(engines))

    def request_timer(self, model_name: str) -> RequestTimer:
        return RequestTimer(self, model_name)

    def render(self) -> bytes:
        return generate_latest(self.registry)
