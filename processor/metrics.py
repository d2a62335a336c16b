"""Prometheus metrics of the processor."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_FOLDED = Counter("flowmetrics_events_folded_total", "Canonical events decoded and folded")
EVENTS_DEAD = Counter(
    "flowmetrics_events_dead_lettered_total", "Events sent to the dead-letter topic"
)
BATCH_SECONDS = Histogram(
    "flowmetrics_fold_batch_seconds",
    "Time to fold one batch in one transaction",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CONSUMER_LAG = Gauge(
    "flowmetrics_consumer_lag", "Records behind the high watermark", ["topic", "partition"]
)
DEFERRED_SECONDS = Histogram(
    "flowmetrics_deferred_refresh_seconds",
    "Time to refresh the marked entities of the deferred projections (DORA)",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
HISTORY_CACHE = Counter(
    "flowmetrics_history_cache_total",
    "Work-item histories taken from the processor's cache (hit) or read back (miss)",
    ["outcome"],
)
