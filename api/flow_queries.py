"""Queries behind the core flow metrics: throughput, WIP, cycle and lead time.

Percentiles are exact, with linear interpolation (``percentile_cont``), over
the filtered set of completions; null when the set is empty.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from api.filters import Filters
from api.flow_counts import daily_flow, wip_at

SECONDS_PER_HOUR = 3600.0


def _summary(prefix: str, row: dict[str, Any]) -> dict[str, float | None]:
    def hours(v: Any) -> float | None:
        return None if v is None else round(float(v) / SECONDS_PER_HOUR, 4)

    return {k: hours(row[f"{prefix}_{k}"]) for k in ("mean", "p50", "p85", "p95")}


def _stats(column: str, prefix: str) -> str:
    return (
        f"avg({column}) as {prefix}_mean, "
        f"percentile_cont(0.5) within group (order by {column}) as {prefix}_p50, "
        f"percentile_cont(0.85) within group (order by {column}) as {prefix}_p85, "
        f"percentile_cont(0.95) within group (order by {column}) as {prefix}_p95"
    )


async def _completion_stats(
    conn: AsyncConnection[Any], f: Filters, column: str, prefix: str
) -> dict[str, Any]:
    where, params = f.where()
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"""select count(*) as throughput, {_stats(column, prefix)}
                from completions
                where completed_at >= %(start)s and completed_at < %(end)s and {where}""",
            {**params, "start": f.start, "end": f.end},
        )
        row = await cur.fetchone()
    assert row is not None
    return row


async def flow_metrics(pool: AsyncConnectionPool, f: Filters) -> dict[str, Any]:
    """The window's numbers. Cycle and lead time each need a sort of every
    completion in the window; they run at once on two pooled connections (two
    cores) rather than one after the other on one."""

    async def cycle_and_wip() -> tuple[dict[str, Any], int]:
        async with pool.connection() as conn:
            return await _completion_stats(conn, f, "cycle_time_s", "ct"), await wip_at(
                conn, f, f.end
            )

    async def lead() -> dict[str, Any]:
        async with pool.connection() as conn:
            return await _completion_stats(conn, f, "lead_time_s", "lt")

    (ct, wip), lt = await asyncio.gather(cycle_and_wip(), lead())
    return {
        "start": f.start.isoformat(),
        "end": f.end.isoformat(),
        "throughput": int(ct["throughput"]),
        "wip": wip,
        "cycle_time_hours": _summary("ct", ct),
        "lead_time_hours": _summary("lt", lt),
    }


def bucket_origin(start: datetime, interval: str) -> datetime:
    """UTC midnight of ``start`` (days), or of the Monday on or before it (weeks)."""
    day = start.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=day.weekday()) if interval == "week" else day


async def flow_timeseries(
    conn: AsyncConnection[Any], f: Filters, interval: str
) -> list[dict[str, Any]]:
    """Throughput per bucket (by completion time) and WIP at each bucket's end.

    Both come from the daily counters (:mod:`api.flow_counts`): a bucket's
    throughput is the sum of its days', its WIP the WIP at its last day's end.
    The cost grows with the days of the history, not with its rows. The last
    bucket is cut at ``end``.
    """
    step = timedelta(days=7 if interval == "week" else 1)
    origin = bucket_origin(f.start, interval)
    days = await daily_flow(conn, f, origin.date())
    buckets = []
    per_bucket = step.days
    for k in range(0, len(days.wip), per_bucket):
        bucket_start = origin + k * timedelta(days=1)
        buckets.append(
            {
                "start": bucket_start.isoformat(),
                "end": min(bucket_start + step, f.end).astimezone(UTC).isoformat(),
                "throughput": sum(days.completed[k : k + per_bucket]),
                "wip": days.wip[min(k + per_bucket, len(days.wip)) - 1],
            }
        )
    return buckets
