"""Queries behind the core flow metrics: throughput, WIP, cycle and lead time.

Percentiles are exact, with linear interpolation (``percentile_cont``), over
the filtered set of completions; null when the set is empty
(:mod:`api.duration_stats`).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from api.duration_stats import Stats, duration_stats, histogram_scope, raw_stats
from api.filters import Filters
from api.flow_counts import daily_flow, wip_at
from api.percentiles import QUANTILES

SECONDS_PER_HOUR = 3600.0


def _hours(v: float | None) -> float | None:
    return None if v is None else round(v / SECONDS_PER_HOUR, 4)


def _summary(s: Stats) -> dict[str, float | None]:
    return {
        "mean": _hours(s.mean),
        **{f"p{round(q * 100)}": _hours(s.percentiles[q]) for q in QUANTILES},
    }


async def flow_metrics(pool: AsyncConnectionPool, f: Filters) -> dict[str, Any]:
    """The window's numbers. Cycle and lead time come from the duration histogram
    and the few values their percentiles need (:mod:`api.duration_stats`), WIP from
    the daily counters, on two pooled connections at once. Without a histogram
    for the filters, cycle and lead time are each a sort of the window's values:
    they run at once on two connections (two cores), WIP after cycle time."""

    async def durations() -> dict[str, Stats]:
        async with pool.connection() as conn:
            return await duration_stats(conn, f)

    async def wip() -> int:
        async with pool.connection() as conn:
            return await wip_at(conn, f, f.end)

    async def raw_cycle_and_wip() -> tuple[Stats, int]:
        async with pool.connection() as conn:
            return await raw_stats(conn, f, "cycle_time_s"), await wip_at(conn, f, f.end)

    async def raw_lead() -> Stats:
        async with pool.connection() as conn:
            return await raw_stats(conn, f, "lead_time_s")

    if histogram_scope(f) is None:
        (ct, wip_now), lt = await asyncio.gather(raw_cycle_and_wip(), raw_lead())
    else:
        stats, wip_now = await asyncio.gather(durations(), wip())
        ct, lt = stats["cycle_time_s"], stats["lead_time_s"]
    return {
        "start": f.start.isoformat(),
        "end": f.end.isoformat(),
        # cycle_time_s is not null: every completion has one.
        "throughput": ct.n,
        "wip": wip_now,
        "cycle_time_hours": _summary(ct),
        "lead_time_hours": _summary(lt),
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
