"""Queries behind the flow analytics: CFD, aging WIP, cycle-time scatter, time in
stage and flow efficiency, and the throughput history a forecast samples.

Definitions (``docs/analytics.md`` is the user-facing version):

- Days are UTC days. Percentiles are exact with linear interpolation
  (``percentile_cont``), like ``/api/v1/metrics``.
- Cycle time, start and completion come from the fold, which applies each
  team's ``start_stage``/``done_stage`` (``docs/stages.md``); nothing here
  re-derives them, so per-team cycle-time definitions hold everywhere.
- Stage kinds (queue/active/done) come from the stage configuration.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from api.filters import Filters
from processor.stages import Stage

HOUR = 3600.0
CONFIDENCE_FLAGS = ("on_track", "at_risk", "breached")


def _hours(seconds: Any) -> float | None:
    return None if seconds is None else round(float(seconds) / HOUR, 4)


def _ratio(value: Any) -> float | None:
    return None if value is None else round(float(value), 4)


def _iso(value: datetime | date | None) -> str | None:
    return None if value is None else value.isoformat()


def utc_day(at: datetime) -> date:
    return at.astimezone(UTC).date()


def day_start(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def days_covering(f: Filters) -> tuple[date, date]:
    """UTC days intersecting [start, end): the first day and the day after the last."""
    last = f.end - timedelta(microseconds=1)
    return utc_day(f.start), utc_day(last) + timedelta(days=1)


def _percentiles(column: str) -> str:
    return (
        f"count(*) as n, avg({column}) as mean, "
        f"percentile_cont(0.5) within group (order by {column}) as p50, "
        f"percentile_cont(0.85) within group (order by {column}) as p85, "
        f"percentile_cont(0.95) within group (order by {column}) as p95"
    )


# -- cumulative flow ----------------------------------------------------------------


async def cumulative_flow(
    conn: AsyncConnection[Any], f: Filters, stages: Sequence[Stage]
) -> dict[str, Any]:
    """Per UTC day and stage: items that had reached the stage or a later one by day's end."""
    first, after = days_covering(f)
    async with conn.cursor() as cur:
        await cur.execute(
            "select day, stage_index, items from cfd_counts(%s, %s, %s, %s, %s)",
            (first, after, f.team, f.project, f.item_type),
        )
        rows = await cur.fetchall()
        counts: dict[tuple[date, int], int] = {(d, i): int(n) for d, i, n in rows}
        # The counters hold whole days; a last day cut by `end` counts up to `end`
        # (docs/analytics.md): take back the arrivals in [end, that day's end).
        last = after - timedelta(days=1)
        day_end = datetime.combine(after, time(), tzinfo=UTC)
        if f.end < day_end:
            where, params = f.where()
            await cur.execute(
                f"select stage_index, count(*) from stage_arrivals "
                f"where arrived_at >= %(cut)s and arrived_at < %(day_end)s and {where} "
                f"group by stage_index",
                {**params, "cut": f.end, "day_end": day_end},
            )
            for index, late in await cur.fetchall():
                if (last, index) in counts:
                    counts[(last, index)] -= int(late)
    days = []
    day = first
    while day < after:
        days.append(
            {"day": day.isoformat(),
             "items": {s.name: counts.get((day, s.index), 0) for s in stages}}
        )
        day += timedelta(days=1)
    return {
        "start": f.start.isoformat(),
        "end": f.end.isoformat(),
        "stages": [{"name": s.name, "index": s.index, "kind": s.kind} for s in stages],
        "days": days,
    }


# -- aging work in progress -----------------------------------------------------------


def aging_flag(age_s: float, p85_s: float | None, p95_s: float | None) -> str | None:
    """``breached`` above p95, ``at_risk`` above p85, else ``on_track``; None without reference."""
    if p85_s is None or p95_s is None:
        return None
    if age_s > p95_s:
        return "breached"
    if age_s > p85_s:
        return "at_risk"
    return "on_track"


async def aging_wip(conn: AsyncConnection[Any], f: Filters) -> dict[str, Any]:
    """Items in progress at ``f.end``, against their team's cycle times of [start, end)."""
    where, params = f.where("i")
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"""select i.item_id, coalesce(w.display_key, i.item_id) as key, w.title, i.team,
                       i.project, i.item_type, i.stage, i.entered_at, w.started_at,
                       extract(epoch from %(at)s - w.started_at) as age_s
                from stage_intervals i
                join work_items w on w.item_id = i.item_id
                where i.flow_state = 'wip' and i.entered_at <= %(at)s
                  and (i.exited_at is null or i.exited_at > %(at)s) and {where}
                order by age_s desc, i.item_id""",
            {**params, "at": f.end},
        )
        wip = await cur.fetchall()
        teams = sorted({r["team"] for r in wip})
        await cur.execute(
            f"""select team, {_percentiles("cycle_time_s")}
                from completions
                where completed_at >= %(start)s and completed_at < %(end)s
                  and team = any(%(teams)s)
                group by team""",
            {"start": f.start, "end": f.end, "teams": teams},
        )
        reference = {r["team"]: r for r in await cur.fetchall()}
    items = []
    summary = dict.fromkeys((*CONFIDENCE_FLAGS, "no_reference"), 0)
    for r in wip:
        ref = reference.get(r["team"])
        age_s = float(r["age_s"])
        flag = aging_flag(age_s, ref["p85"], ref["p95"]) if ref else None
        summary[flag or "no_reference"] += 1
        items.append(
            {
                **_item_fields(r),
                "stage": r["stage"],
                "in_stage_since": _iso(r["entered_at"]),
                "started_at": _iso(r["started_at"]),
                "age_hours": _hours(age_s),
                "flag": flag,
            }
        )
    return {
        "as_of": f.end.isoformat(),
        "reference": {"start": f.start.isoformat(), "end": f.end.isoformat()},
        "teams": {
            team: {
                "completed": int(ref["n"]),
                "p50_hours": _hours(ref["p50"]),
                "p85_hours": _hours(ref["p85"]),
                "p95_hours": _hours(ref["p95"]),
            }
            for team, ref in sorted(reference.items())
        },
        "summary": summary,
        "items": items,
    }


def _item_fields(r: dict[str, Any]) -> dict[str, Any]:
    """The fields every per-item list of the analytics endpoints starts with."""
    return {
        "key": r["key"],
        "item_id": r["item_id"],
        "title": r["title"],
        "team": r["team"],
        "project": r["project"],
        "type": r["item_type"],
    }


# -- cycle-time scatter ---------------------------------------------------------------


async def cycle_time_scatter(
    conn: AsyncConnection[Any], f: Filters, limit: int
) -> dict[str, Any]:
    where, params = f.where("c")
    window = {**params, "start": f.start, "end": f.end, "limit": limit}
    completed_in = "c.completed_at >= %(start)s and c.completed_at < %(end)s"
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"select {_percentiles('c.cycle_time_s')} from completions c "
            f"where {completed_in} and {where}",
            window,
        )
        stats = await cur.fetchone()
        await cur.execute(
            f"""select c.item_id, coalesce(w.display_key, c.item_id) as key, w.title, c.team,
                       c.project, c.item_type, c.started_at, c.completed_at, c.cycle_time_s
                from completions c left join work_items w on w.item_id = c.item_id
                where {completed_in} and {where}
                order by c.completed_at, c.item_id
                limit %(limit)s""",
            window,
        )
        rows = await cur.fetchall()
    assert stats is not None
    return {
        "start": f.start.isoformat(),
        "end": f.end.isoformat(),
        "count": int(stats["n"]),
        "truncated": int(stats["n"]) > len(rows),
        "mean_hours": _hours(stats["mean"]),
        "percentiles_hours": {k: _hours(stats[k]) for k in ("p50", "p85", "p95")},
        "items": [
            {
                **_item_fields(r),
                "started_at": _iso(r["started_at"]),
                "completed_at": _iso(r["completed_at"]),
                "cycle_time_hours": _hours(r["cycle_time_s"]),
            }
            for r in rows
        ],
    }


# -- time in stage and flow efficiency --------------------------------------------------

# For each item completed in [start, end): every stay before its (final)
# completion, clipped at the completion; ``flow_s`` is the part of the stay
# between start and completion, which is what flow efficiency counts.
_STAYS = """
    with done as (
      select c.item_id, c.started_at, c.completed_at, c.cycle_time_s
      from completions c
      where c.completed_at >= %(start)s and c.completed_at < %(end)s and {where}
    ), stays as (
      select d.item_id, i.stage_index,
             extract(epoch from least(coalesce(i.exited_at, d.completed_at), d.completed_at)
                                - i.entered_at) as total_s,
             greatest(extract(epoch from least(coalesce(i.exited_at, d.completed_at),
                                               d.completed_at)
                                         - greatest(i.entered_at, d.started_at)), 0) as flow_s
      from done d
      join stage_intervals i on i.item_id = d.item_id
      where i.entered_at < d.completed_at and i.stage_index >= 0
    )
"""


async def time_in_stage(
    conn: AsyncConnection[Any], f: Filters, stages: Sequence[Stage], limit: int
) -> dict[str, Any]:
    where, params = f.where("c")
    active = [s.index for s in stages if s.kind == "active"]
    queue = [s.index for s in stages if s.kind == "queue"]
    args = {**params, "start": f.start, "end": f.end, "active": active, "queue": queue,
            "limit": limit}
    stays = _STAYS.format(where=where)
    efficiency = """
        efficiency as (
          select d.item_id, d.completed_at, d.cycle_time_s,
                 coalesce(sum(s.flow_s) filter (where s.stage_index = any(%(active)s)), 0)
                   as active_s,
                 coalesce(sum(s.flow_s) filter (where s.stage_index = any(%(queue)s)), 0)
                   as queue_s
          from done d left join stays s on s.item_id = d.item_id
          group by d.item_id, d.completed_at, d.cycle_time_s
        )
    """
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"""{stays}, per_item as (
                  select item_id, stage_index, sum(total_s) as s from stays
                  group by item_id, stage_index)
                select stage_index, {_percentiles("s")}
                from per_item group by stage_index order by stage_index""",
            args,
        )
        per_stage = {r["stage_index"]: r for r in await cur.fetchall()}
        await cur.execute(
            f"""{stays}, {efficiency}
                select count(*) as n, sum(active_s) as active_s, sum(queue_s) as queue_s
                from efficiency""",
            args,
        )
        overall = await cur.fetchone()
        await cur.execute(
            f"""{stays}, {efficiency}
                select e.*, coalesce(w.display_key, e.item_id) as key
                from efficiency e left join work_items w on w.item_id = e.item_id
                order by e.completed_at, e.item_id
                limit %(limit)s""",
            args,
        )
        rows = await cur.fetchall()
    assert overall is not None

    def efficiency_of(active_s: Any, queue_s: Any) -> float | None:
        flow = float(active_s or 0) + float(queue_s or 0)
        return None if flow == 0 else _ratio(float(active_s) / flow)

    return {
        "start": f.start.isoformat(),
        "end": f.end.isoformat(),
        "items_completed": int(overall["n"]),
        "stages": [
            {
                "name": s.name,
                "index": s.index,
                "kind": s.kind,
                "items": int(per_stage[s.index]["n"]) if s.index in per_stage else 0,
                "mean_hours": _hours(per_stage[s.index]["mean"]) if s.index in per_stage
                else None,
                "p50_hours": _hours(per_stage[s.index]["p50"]) if s.index in per_stage
                else None,
                "p85_hours": _hours(per_stage[s.index]["p85"]) if s.index in per_stage
                else None,
            }
            for s in stages
        ],
        "flow_efficiency": {
            "overall": efficiency_of(overall["active_s"], overall["queue_s"]),
            "active_hours": _hours(overall["active_s"] or 0),
            "queue_hours": _hours(overall["queue_s"] or 0),
            "truncated": int(overall["n"]) > len(rows),
            "items": [
                {
                    "key": r["key"],
                    "item_id": r["item_id"],
                    "completed_at": _iso(r["completed_at"]),
                    "cycle_time_hours": _hours(r["cycle_time_s"]),
                    "active_hours": _hours(r["active_s"]),
                    "queue_hours": _hours(r["queue_s"]),
                    "efficiency": efficiency_of(r["active_s"], r["queue_s"]),
                }
                for r in rows
            ],
        },
    }


# -- throughput history (what a forecast samples) --------------------------------------


async def daily_throughput(
    conn: AsyncConnection[Any], f: Filters, first: date, after: date
) -> list[int]:
    """Items completed on each UTC day in [first, after), zero days included."""
    where, params = f.where()
    async with conn.cursor() as cur:
        await cur.execute(
            f"""select (day at time zone 'UTC')::date, sum(items)
                from daily_throughput
                where day >= %(first)s and day < %(after)s and {where}
                group by 1""",
            {**params, "first": day_start(first), "after": day_start(after)},
        )
        per_day = {d: int(n) for d, n in await cur.fetchall()}
    return [per_day.get(first + timedelta(days=i), 0) for i in range((after - first).days)]
