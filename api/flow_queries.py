"""Queries behind the core flow metrics: throughput, WIP, cycle and lead time.

Percentiles are exact, with linear interpolation (``percentile_cont``), over
the filtered set of completions; null when the set is empty.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from api.filters import Filters

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


async def wip_at(conn: AsyncConnection[Any], f: Filters, at: datetime) -> int:
    where, params = f.where()
    async with conn.cursor() as cur:
        await cur.execute(
            f"""select count(distinct item_id) from stage_intervals
                where flow_state = 'wip' and entered_at <= %(at)s
                  and (exited_at is null or exited_at > %(at)s) and {where}""",
            {**params, "at": at},
        )
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def flow_metrics(conn: AsyncConnection[Any], f: Filters) -> dict[str, Any]:
    where, params = f.where()
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"""select count(*) as throughput,
                       {_stats("cycle_time_s", "ct")},
                       {_stats("lead_time_s", "lt")}
                from completions
                where completed_at >= %(start)s and completed_at < %(end)s and {where}""",
            {**params, "start": f.start, "end": f.end},
        )
        row = await cur.fetchone()
    assert row is not None
    return {
        "start": f.start.isoformat(),
        "end": f.end.isoformat(),
        "throughput": int(row["throughput"]),
        "wip": await wip_at(conn, f, f.end),
        "cycle_time_hours": _summary("ct", row),
        "lead_time_hours": _summary("lt", row),
    }


async def flow_timeseries(
    conn: AsyncConnection[Any], f: Filters, interval: str
) -> list[dict[str, Any]]:
    """Throughput per bucket (by completion time) and WIP at each bucket's end.

    Buckets start at UTC midnight of ``start`` (days) or of the Monday on or
    before it (weeks); the last bucket is cut at ``end``.
    """
    _, params = f.where()
    where_i, _ = f.where("i")
    where_c, _ = f.where("c")
    step = "1 day" if interval == "day" else "7 days"
    origin = "date_trunc('day', %(start)s::timestamptz, 'UTC')"
    if interval == "week":
        origin = "date_trunc('week', %(start)s::timestamptz, 'UTC')"
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"""
            with buckets as (
                select b as bucket_start, least(b + interval '{step}', %(end)s) as bucket_end
                from generate_series({origin}, %(end)s::timestamptz - interval '1 microsecond',
                                     interval '{step}') as b
            )
            select bucket_start, bucket_end,
                   (select count(*) from completions c
                     where c.completed_at >= greatest(bucket_start, %(start)s)
                       and c.completed_at < bucket_end and {where_c}) as throughput,
                   (select count(distinct i.item_id) from stage_intervals i
                     where i.flow_state = 'wip' and i.entered_at <= bucket_end
                       and (i.exited_at is null or i.exited_at > bucket_end)
                       and {where_i}) as wip
            from buckets order by bucket_start
            """,
            {**params, "start": f.start, "end": f.end},
        )
        rows = await cur.fetchall()
    return [
        {
            "start": r["bucket_start"].isoformat(),
            "end": r["bucket_end"].isoformat(),
            "throughput": int(r["throughput"]),
            "wip": int(r["wip"]),
        }
        for r in rows
    ]
