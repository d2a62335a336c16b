"""Flow gauges for Prometheus, read from the database at scrape time.

The processor's own counters (events folded, dead letters, lag) live in the
processor's process; these describe the data, so any API replica can serve them.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Gauge
from psycopg import AsyncConnection

CYCLE_TIME_BUCKETS_H = (1, 4, 8, 24, 48, 72, 120, 168, 336, 720, float("inf"))


class FlowGauges:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.wip = Gauge(
            "flowmetrics_wip_items",
            "Work items in progress, by stage",
            ["stage"],
            registry=registry,
        )
        self.transitions = Gauge(
            "flowmetrics_transitions",
            "Transitions stored, by stage entered",
            ["stage"],
            registry=registry,
        )
        self.cycle_time = Gauge(
            "flowmetrics_cycle_time_hours_bucket",
            "Completed items with cycle time at or under `le` hours (cumulative)",
            ["le"],
            registry=registry,
        )

    async def refresh(self, conn: AsyncConnection[Any]) -> None:
        async with conn.cursor() as cur:
            await cur.execute(
                "select stage, count(*) from work_items where flow_state = 'wip' group by stage"
            )
            self.wip.clear()
            for stage, n in await cur.fetchall():
                self.wip.labels(stage=stage).set(n)
            await cur.execute("select to_stage, count(*) from transitions group by to_stage")
            self.transitions.clear()
            for stage, n in await cur.fetchall():
                self.transitions.labels(stage=stage).set(n)
            bounds = [b for b in CYCLE_TIME_BUCKETS_H if b != float("inf")]
            await cur.execute(
                "select "
                + ", ".join(f"count(*) filter (where cycle_time_s <= {b * 3600})" for b in bounds)
                + ", count(*) from completions"
            )
            row = await cur.fetchone()
        assert row is not None
        for bound, n in zip(CYCLE_TIME_BUCKETS_H, row, strict=True):
            self.cycle_time.labels(le="+Inf" if bound == float("inf") else str(bound)).set(n)
