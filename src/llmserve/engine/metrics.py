"""Prometheus metrics of one engine, under vLLM's names with an ``llmserve:`` prefix.

Every EngineMetrics owns its own CollectorRegistry (never the process-global one), so several
servers or engines in one process do not collide. The engine reports events as they happen
(``on_prompt_tokens`` / ``on_generation_tokens`` per step, ``on_request_finished`` per request);
queue and cache gauges are read from ``engine.stats()`` at scrape time by a custom collector.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

PREFIX = "llmserve:"

# Buckets copied from vLLM (v1/metrics/loggers.py) so dashboards built for vLLM read the same.
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
    40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
FINISH_REASONS = ("stop", "length", "abort")


def build_1_2_5_buckets(max_value: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to ``max_value`` (vLLM's token-count buckets)."""
    buckets, exponent = [], 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_value:
                return buckets
            buckets.append(value)
        exponent += 1


class _StatsCollector:
    """Reads the engine's scheduler and KV cache numbers when Prometheus scrapes."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.stats_fn: Callable[[], Any] | None = None

    def describe(self) -> Iterable[Metric]:
        return self._families(None)

    def collect(self) -> Iterable[Metric]:
        stats = None
        if self.stats_fn is not None:
            try:
                stats = self.stats_fn()
            except Exception:  # a dead or sleeping engine must not break the scrape
                stats = None
        return self._families(stats)

    def _families(self, stats: Any) -> list[Metric]:
        def value(name: str) -> float:
            return float(getattr(stats, name, 0) or 0)

        labels = [self.model_name]
        families = []
        for name, doc, field in (
            ("num_requests_running", "Number of requests in model execution batches.", "num_running"),
            ("num_requests_waiting", "Number of requests waiting to be processed.", "num_waiting"),
            ("kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", "kv_cache_usage"),
        ):
            gauge = GaugeMetricFamily(PREFIX + name, doc, labels=["model_name"])
            gauge.add_metric(labels, value(field))
            families.append(gauge)
        for name, doc, field in (
            (
                "prefix_cache_queries",
                "Prefix cache queries, in terms of number of queried tokens.",
                "prefix_cache_queries",
            ),
            (
                "prefix_cache_hits",
                "Prefix cache hits, in terms of number of cached tokens.",
                "prefix_cache_hits",
            ),
        ):
            counter = CounterMetricFamily(PREFIX + name, doc, labels=["model_name"])
            counter.add_metric(labels, value(field))
            families.append(counter)
        return families


class EngineMetrics:
    """Counters and histograms of one served model, plus gauges read from ``stats_fn`` at scrape.

    ``prompt_tokens_total`` / ``generation_tokens_total`` grow by what the engine reports with
    ``on_prompt_tokens`` / ``on_generation_tokens`` (per step, like vLLM); ``on_request_finished``
    feeds the per-request histograms and ``request_success_total{finished_reason}``.
    """

    def __init__(
        self, model_name: str, max_model_len: int = 8192, stats_fn: Callable[[], Any] | None = None
    ) -> None:
        self.model_name = model_name
        self.registry = CollectorRegistry()
        self._stats = _StatsCollector(model_name)
        self._stats.stats_fn = stats_fn
        self.registry.register(self._stats)
        reg, name = self.registry, ["model_name"]
        self.prompt_tokens = Counter(
            PREFIX + "prompt_tokens", "Number of prefill tokens processed.", name, registry=reg
        ).labels(model_name)
        self.generation_tokens = Counter(
            PREFIX + "generation_tokens", "Number of generation tokens processed.", name, registry=reg
        ).labels(model_name)
        success = Counter(
            PREFIX + "request_success",
            "Count of successfully processed requests.",
            ["model_name", "finished_reason"],
            registry=reg,
        )
        self._success = success
        for reason in FINISH_REASONS:  # present at 0 from the start, as in vLLM
            success.labels(model_name, reason)
        token_buckets = build_1_2_5_buckets(max(1, max_model_len))

        def histogram(metric: str, doc: str, buckets: Sequence[float]):
            return Histogram(PREFIX + metric, doc, name, buckets=buckets, registry=reg).labels(model_name)

        self.request_prompt_tokens = histogram(
            "request_prompt_tokens", "Number of prefill tokens processed.", token_buckets
        )
        self.request_generation_tokens = histogram(
            "request_generation_tokens", "Number of generation tokens processed.", token_buckets
        )
        self.ttft = histogram(
            "time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS
        )
        self.itl = histogram(
            "inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", ITL_BUCKETS
        )
        self.e2e = histogram(
            "e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.queue = histogram(
            "request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )

    # --- called by the engine ----------------------------------------------------------------------

    def on_prompt_tokens(self, n: int) -> None:
        if n > 0:
            self.prompt_tokens.inc(n)

    def on_generation_tokens(self, n: int) -> None:
        if n > 0:
            self.generation_tokens.inc(n)

    def on_request_finished(
        self,
        finish_reason: str,
        prompt_tokens: int,
        generation_tokens: int,
        ttft_s: float | None,
        e2e_s: float,
        itl_s: Sequence[float],
        queue_s: float,
    ) -> None:
        """One finished request (every choice done). Token counters are not touched here: the
        engine reports tokens as it processes them."""
        self._success.labels(self.model_name, finish_reason or "stop").inc()
        self.request_prompt_tokens.observe(prompt_tokens)
        self.request_generation_tokens.observe(generation_tokens)
        if ttft_s is not None:
            self.ttft.observe(max(0.0, ttft_s))
        for gap in itl_s:
            self.itl.observe(max(0.0, gap))
        self.e2e.observe(max(0.0, e2e_s))
        self.queue.observe(max(0.0, queue_s))

    # --- read by /metrics --------------------------------------------------------------------------

    content_type = CONTENT_TYPE_LATEST

    def render(self, stats_fn: Callable[[], Any] | None = None) -> bytes:
        """Prometheus text exposition of this registry; ``stats_fn`` (e.g. ``engine.stats``)
        replaces the stats source given at construction."""
        if stats_fn is not None:
            self._stats.stats_fn = stats_fn
        return generate_latest(_WithoutCreated(self.registry))


class _WithoutCreated:
    """The registry minus the ``*_created`` series prometheus_client adds (vLLM turns them off
    too; the switch for that in prometheus_client is process-global)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        for metric in self.registry.collect():
            metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric


def render_all(metrics: Sequence[EngineMetrics]) -> bytes:
    """One exposition for several engines: each family once, with every engine's samples (the
    ``model_name`` label tells them apart)."""
    families: dict[str, Metric] = {}
    for item in metrics:
        for metric in _WithoutCreated(item.registry).collect():
            found = families.get(metric.name)
            if found is None:
                families[metric.name] = metric
            else:
                found.samples.extend(metric.samples)
    return generate_latest(_Families(list(families.values())))


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return iter(self.families)
