"""Reads the OpenTelemetry service graph from Prometheus and publishes its edges.

Every ``interval`` it asks Prometheus' HTTP query API (``/api/v1/query``) for
``traces_service_graph_request_total{client, server, connection_type}`` (by
default: the pairs with requests in the last hour), turns each client → server
pair into a ``service_edge.observed`` event (:func:`processor.services_graph.
edges_from_vector`: self-loops and pairs missing a label dropped) and publishes
them like any accepted delivery (Kafka, or the spool while Kafka is down).

Errors — the scheduler never stops on one, it logs and waits:

ScrapeFailed
├── Prometheus unreachable, timed out, or answered non-2xx / ``status: error``
└── the answer is not a vector
then retried after a backoff doubling from ``interval / 10`` up to ``interval``;
a publish that fails is logged and the next scrape sends the edges again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import structlog
from prometheus_client import Counter

from collectors.publisher import Publisher
from processor.services_graph import METRIC, PrometheusAnswerError, edges_from_vector
from schemas.events import ServiceEdgeObserved

log = structlog.get_logger("service_graph_scraper")

DEFAULT_QUERY = f"sum by (client, server, connection_type) (increase({METRIC}[1h])) > 0"

SCRAPES = Counter(
    "flowmetrics_service_graph_scrapes_total", "Service-graph scrapes of Prometheus", ["outcome"]
)


class ScrapeFailed(Exception):
    """Prometheus could not give the service graph this time."""


class ServiceGraphScraper:
    def __init__(
        self,
        *,
        base_url: str,
        publisher: Publisher,
        query: str = DEFAULT_QUERY,
        interval: float = 300.0,
        timeout: float = 10.0,
        resolution: timedelta = timedelta(hours=1),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.publisher = publisher
        self.query = query
        self.interval = interval
        self.timeout = timeout
        self.resolution = resolution
        self.clock = clock
        self.scrapes = 0
        self.failures = 0

    async def scrape(self) -> list[ServiceEdgeObserved]:
        """One reading of the graph (raises :class:`ScrapeFailed`)."""
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                response = await client.get(
                    f"{self.base_url}/api/v1/query", params={"query": self.query}
                )
        except httpx.HTTPError as exc:
            raise ScrapeFailed(f"prometheus unreachable: {exc!r}") from exc
        try:
            answer: Any = response.json()
        except ValueError:
            answer = None
        if not response.is_success or not isinstance(answer, dict):
            detail = answer.get("error") if isinstance(answer, dict) else response.text[:200]
            raise ScrapeFailed(f"prometheus answered {response.status_code}: {detail}")
        try:
            return edges_from_vector(answer, received_at=self.clock(), resolution=self.resolution)
        except PrometheusAnswerError as exc:
            raise ScrapeFailed(f"prometheus answer: {exc}") from exc

    async def scrape_and_publish(self) -> int:
        edges = await self.scrape()
        if edges:
            await self.publisher.publish(None, edges)
        return len(edges)

    async def run(self, stop: asyncio.Event) -> None:
        """Scrape every ``interval`` until ``stop``; failures back off and retry."""
        backoff = self.interval / 10
        while not stop.is_set():
            self.scrapes += 1
            try:
                published = await self.scrape_and_publish()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: log it, never stop the schedule
                self.failures += 1
                SCRAPES.labels(outcome="failed").inc()
                log.warning("service_graph_scrape_failed", url=self.base_url, error=str(exc),
                            retry_in_s=backoff)
                wait, backoff = backoff, min(backoff * 2, self.interval)
            else:
                SCRAPES.labels(outcome="ok").inc()
                log.info("service_graph_scraped", edges=published)
                wait, backoff = self.interval, self.interval / 10
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait)
