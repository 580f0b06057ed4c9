"""Prometheus metrics of one gateway app, on its own registry (so several apps can live in one process).

    abgate_http_requests_total{method, route, status}       every request
    abgate_search_requests_total{experiment, arm}           searches answered, per arm
    abgate_search_latency_seconds{experiment, arm}          histogram, per arm (handler start -> response)
    abgate_feedback_total{type}                             feedback accepted
    abgate_microbatch_size                                  histogram of the rows in each ONNX call
    abgate_event_queue_depth                                events waiting in the writer
    abgate_event_backlog_bytes                              spool bytes accepted but not yet stored (0: all stored)
    abgate_events_written_total / _spilled_total / _dropped_total   from EventWriter.stats()
    abgate_batcher_queue_depth                              queries waiting for a micro-batch
    abgate_query_cache_hits_total / _misses_total, abgate_query_cache_entries   (when --query-cache > 0)
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 128, 256)


class _LiveCollector:
    """Reads the writer's stats() and batcher depths at scrape time: no bookkeeping on the request path."""

    def __init__(self, writer_stats: Callable[[], dict], batcher_depth: Callable[[], int],
                 cache_stats: Callable[[], dict] | None = None) -> None:
        self._writer_stats = writer_stats
        self._batcher_depth = batcher_depth
        self._cache_stats = cache_stats     # e.g. Runtime.query_cache_stats: {} when the cache is off

    def collect(self):
        stats = self._writer_stats() or {}
        depth = GaugeMetricFamily("abgate_event_queue_depth", "Events waiting in the event writer's queue")
        depth.add_metric([], float(_pick(stats, "queue_depth", "queued", "queue", "pending")))
        yield depth
        # Growing: the store is behind or down (events wait safely in the spool). 0: every accepted event is in
        # the store, so a report built now counts all of them (the demo waits for it before each look).
        backlog = GaugeMetricFamily("abgate_event_backlog_bytes", "Spool bytes accepted but not yet stored")
        backlog.add_metric([], float(_pick(stats, "backlog_bytes")))
        yield backlog
        for name in ("written", "spilled", "dropped"):
            family = CounterMetricFamily(f"abgate_events_{name}", f"Events {name} by the event writer")
            family.add_metric([], float(_pick(stats, name, f"events_{name}")))
            yield family
        batcher = GaugeMetricFamily("abgate_batcher_queue_depth", "Queries waiting for a micro-batch")
        batcher.add_metric([], float(self._batcher_depth()))
        yield batcher
        cache = self._cache_stats() if self._cache_stats else {}
        if cache:
            for name in ("hits", "misses"):
                family = CounterMetricFamily(f"abgate_query_cache_{name}", f"Query-embedding cache {name}")
                family.add_metric([], float(cache[name]))
                yield family
            size = GaugeMetricFamily("abgate_query_cache_entries", "Query embeddings in the cache")
            size.add_metric([], float(cache["size"]))
            yield size


def _pick(stats: dict, *names: str) -> float:
    for name in names:
        value = stats.get(name)
        if isinstance(value, (int, float)):
            return value
    return 0.0


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter("abgate_http_requests", "HTTP requests", ["method", "route", "status"],
                                     registry=self.registry)
        self.searches = Counter("abgate_search_requests", "Searches answered", ["experiment", "arm"],
                                registry=self.registry)
        self.search_latency = Histogram("abgate_search_latency_seconds", "Search latency", ["experiment", "arm"],
                                        buckets=LATENCY_BUCKETS, registry=self.registry)
        self.feedback = Counter("abgate_feedback", "Feedback accepted", ["type"], registry=self.registry)
        self.shadow = _OutcomeCounter(Counter("abgate_shadow_jobs", "Shadow jobs by outcome (queued, done, errors, "
                                              "dropped: queue full or users busy too long)", ["outcome"],
                                              registry=self.registry))
        self.batch_size = Histogram("abgate_microbatch_size", "Queries per ONNX call", buckets=BATCH_BUCKETS,
                                    registry=self.registry)

    def watch(self, writer_stats: Callable[[], dict], batcher_depth: Callable[[], int],
              cache_stats: Callable[[], dict] | None = None) -> None:
        self.registry.register(_LiveCollector(writer_stats, batcher_depth, cache_stats))

    def observe_search(self, experiment: str, arm: str, seconds: float) -> None:
        self.searches.labels(experiment, arm).inc()
        self.search_latency.labels(experiment, arm).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _OutcomeCounter:
    """A labelled counter callable with the outcome alone (what ShadowRunner reports)."""

    def __init__(self, counter: Counter) -> None:
        self.counter = counter

    def labels_inc(self, outcome: str) -> None:
        self.counter.labels(outcome).inc()
