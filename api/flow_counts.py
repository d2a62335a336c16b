"""WIP and throughput per UTC day, read from the daily counters (revision 0008).

``daily_flow_counts`` counts each WIP change on the day at whose *end* it is
first seen (a stay entered or left at ``t`` is on the UTC day of ``t - 1 µs``)
and each completion on its UTC day. Hence:

- WIP at a UTC midnight ``M`` = the sum of ``wip_net`` over the days before
  ``M``'s date, whatever the length of the history;
- WIP at any other instant ``t`` = that sum at ``t``'s midnight, plus the WIP
  stays entered and minus those left in ``(midnight, t]``, counted from
  ``stage_intervals`` (less than one day of rows);
- completions in ``[start, end)`` per day = the counter for the days the range
  covers whole; the days it cuts (a ``start`` or ``end`` off midnight) are
  counted from ``completions``.

So a 90-day series reads a few thousand counter rows plus at most two partial
days of raw rows, and its answer is the raw tables' answer exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from psycopg import AsyncConnection

from api.filters import Filters

ONE_DAY = timedelta(days=1)


def midnight(at: datetime) -> datetime:
    """The UTC midnight at or before ``at``."""
    return datetime.combine(at.astimezone(UTC).date(), time(), tzinfo=UTC)


def whole_days(f: Filters) -> tuple[date, date]:
    """``[first, last)``: the UTC days ``[start, end)`` covers whole (none when
    ``first >= last``); ``last`` is the day of ``end``'s midnight. Precomputed
    per-day rows hold exactly the range's rows for these days."""
    start = midnight(f.start)
    first = start.date() if start == f.start else start.date() + ONE_DAY
    return first, midnight(f.end).date()


@dataclass(frozen=True)
class DailyFlow:
    """Days ``first`` … the last day touching ``[start, end)``: for each, WIP at the
    day's end (or at ``end``, for the day ``end`` cuts) and the completions of the
    day that fall in ``[start, end)``."""

    first: date
    wip: list[int]
    completed: list[int]

    def day(self, i: int) -> date:
        return self.first + timedelta(days=i)


_EDGE_WIP = """
    (select count(*) from stage_intervals
      where flow_state = 'wip' and entered_at > %(edge_from)s and entered_at <= %(edge_to)s
        and {where})
  - (select count(*) from stage_intervals
      where flow_state = 'wip' and exited_at > %(edge_from)s and exited_at <= %(edge_to)s
        and {where})
"""


async def wip_at(conn: AsyncConnection[Any], f: Filters, at: datetime) -> int:
    """Items in a WIP stay at ``at`` (entered by then, not left by then)."""
    where, params = f.where()
    whole = midnight(at)
    async with conn.cursor() as cur:
        await cur.execute(
            f"""select coalesce((select sum(wip_net) from daily_flow_counts
                                 where day < %(whole)s and {where}), 0)
                       + {_EDGE_WIP.format(where=where)}""",
            {**params, "whole": whole.date(), "edge_from": whole, "edge_to": at},
        )
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def daily_flow(conn: AsyncConnection[Any], f: Filters, first: date) -> DailyFlow:
    """WIP and completions per UTC day from ``first`` (at most ``f.start``'s day)."""
    where, params = f.where()
    last = (f.end - timedelta(microseconds=1)).astimezone(UTC).date()
    end_cut = midnight(f.end)  # == f.end when the range ends at midnight
    start_cut = midnight(f.start)
    # Whole days of [start, end): their counters hold exactly the range's completions.
    whole_from, whole_to = whole_days(f)
    async with conn.cursor() as cur:
        await cur.execute(
            f"""select case when day < %(first)s then null else day end as d,
                       sum(wip_net), sum(completed)
                from daily_flow_counts
                where day < %(whole_to)s and {where}
                group by 1""",
            {**params, "first": first, "whole_to": whole_to},
        )
        counted: dict[date | None, tuple[int, int]] = {
            d: (int(w), int(c)) for d, w, c in await cur.fetchall()
        }
        # The days the range cuts: their completions (and WIP at ``end``) from the rows.
        cuts = {
            d: (
                max(f.start, datetime.combine(d, time(), tzinfo=UTC)),
                min(f.end, datetime.combine(d + ONE_DAY, time(), tzinfo=UTC)),
            )
            for d in (start_cut.date(), end_cut.date())
            if first <= d <= last and not whole_from <= d < whole_to
        }
        cut_completed: dict[date, int] = {}
        for d, (lo, hi) in cuts.items():
            await cur.execute(
                f"""select count(*) from completions
                    where completed_at >= %(lo)s and completed_at < %(hi)s and {where}""",
                {**params, "lo": lo, "hi": hi},
            )
            row = await cur.fetchone()
            cut_completed[d] = int(row[0]) if row else 0
        edge = 0
        if end_cut != f.end:
            await cur.execute(
                f"select {_EDGE_WIP.format(where=where)}",
                {**params, "edge_from": end_cut, "edge_to": f.end},
            )
            row = await cur.fetchone()
            edge = int(row[0]) if row else 0
    running = counted.get(None, (0, 0))[0]
    wip, completed = [], []
    day = first
    while day <= last:
        net, done = counted.get(day, (0, 0))
        running += net
        wip.append(running + (edge if day == last else 0))
        if whole_from <= day < whole_to:
            completed.append(done)
        else:
            completed.append(cut_completed.get(day, 0))
        day += ONE_DAY
    return DailyFlow(first=first, wip=wip, completed=completed)
