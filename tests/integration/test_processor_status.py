"""A standalone processor answers health, readiness and Prometheus on its own port."""

from __future__ import annotations

import httpx
import pytest

from infra.embedded import free_port
from schemas.topics import Topics
from tests.pipeline import running_pipeline, wait_for

pytestmark = pytest.mark.integration


async def test_processor_is_ready_once_it_owns_partitions(
    db_dsn: str, kafka_bootstrap: str, topics: Topics
) -> None:
    """/ready answers 200 with the partitions assigned; /metrics has the fold counters."""
    port = free_port()
    async with (
        running_pipeline(db_dsn, kafka_bootstrap, topics, processor_metrics_port=port),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):

        async def ready() -> bool:
            return (await client.get("/ready")).status_code == 200

        await wait_for(ready, timeout=30, what="processor readiness")
        body = (await client.get("/ready")).json()
        assert body["partitions"] >= 1
        assert body["deferred"]["projections"] == ["dora"]

        async def refreshed() -> bool:  # idle at start: the marks a crash may have left
            return bool((await client.get("/ready")).json()["deferred"]["refreshes"] >= 1)

        await wait_for(refreshed, timeout=30, what="the first deferred refresh")
        assert "flowmetrics_events_folded_total" in (await client.get("/metrics")).text
