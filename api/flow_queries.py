"""Queries behind the core flow metrics: throughput, WIP, cycle and lead time.

Percentiles are exact, with linear interpolation (``percentile_cont``), over
the filtered set of completions; null when the set is empty.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
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
    """Items in a WIP stay at ``at``: open stays entered by then, plus stays that
    were entered by then and left after it (two index ranges, not a history scan)."""
    where, params = f.where()
    async with conn.cursor() as cur:
        await cur.execute(
            f"""select
                  (select count(*) from stage_intervals
                    where flow_state = 'wip' and exited_at is null
                      and entered_at <= %(at)s and {where})
                + (select count(*) from stage_intervals
                    where flow_state = 'wip' and exited_at > %(at)s
                      and entered_at <= %(at)s and {where})""",
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


def bucket_origin(start: datetime, interval: str) -> datetime:
    """UTC midnight of ``start`` (days), or of the Monday on or before it (weeks)."""
    day = start.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=day.weekday()) if interval == "week" else day


async def flow_timeseries(
    conn: AsyncConnection[Any], f: Filters, interval: str
) -> list[dict[str, Any]]:
    """Throughput per bucket (by completion time) and WIP at each bucket's end.

    One pass: every WIP stay overlapping the range adds +1 to the bucket it was
    entered in and -1 to the bucket it left in; WIP at a bucket's end is the
    running sum. The cost grows with the stays in the range, not with
    days times history. The last bucket is cut at ``end``.
    """
    _, params = f.where()
    where_i, _ = f.where("i")
    where_c, _ = f.where("c")
    step_s = 86_400 if interval == "day" else 7 * 86_400
    origin = bucket_origin(f.start, interval)
    k_of = "greatest(0, ceil(extract(epoch from ({t}) - %(origin)s) / %(step)s)::int - 1)"
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"""
            with buckets as (
                select (row_number() over (order by b) - 1)::int as k, b as bucket_start,
                       least(b + make_interval(secs => %(step)s), %(end)s) as bucket_end
                from generate_series(%(origin)s::timestamptz,
                                     %(end)s::timestamptz - interval '1 microsecond',
                                     make_interval(secs => %(step)s)) as b
            ),
            w as (
                select i.entered_at, i.exited_at from stage_intervals i
                where i.flow_state = 'wip' and i.entered_at <= %(end)s
                  and (i.exited_at is null or i.exited_at > %(origin)s) and {where_i}
            ),
            deltas as (
                select {k_of.format(t="entered_at")} as k, count(*) as d from w group by 1
                union all
                select {k_of.format(t="exited_at")}, -count(*) from w
                where exited_at <= %(end)s group by 1
            ),
            wip as (select k, sum(d) as d from deltas group by k),
            done as (
                select floor(extract(epoch from c.completed_at - %(origin)s) / %(step)s)::int
                         as k, count(*) as n
                from completions c
                where c.completed_at >= %(start)s and c.completed_at < %(end)s and {where_c}
                group by 1
            )
            select b.bucket_start, b.bucket_end, coalesce(done.n, 0) as throughput,
                   sum(coalesce(wip.d, 0)) over (order by b.k) as wip
            from buckets b left join wip using (k) left join done using (k)
            order by b.k
            """,
            {**params, "start": f.start, "end": f.end, "origin": origin, "step": step_s},
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
