"""Cycle and lead time over a window: count, mean and exact percentiles.

For all teams or one team (the scopes of ``completion_duration_histogram``,
revision 0009), the counts per value bucket are the histogram's over the days
the window covers whole, plus the raw rows of the days ``start`` or ``end`` cut
(as :func:`api.flow_counts.daily_flow` counts completions). The percentiles then
read only the values of the buckets holding their ranks (one index range scan
each, sorted in the database, returning the values at those ranks only;
:mod:`api.percentiles`) and the mean is the buckets' sum over their count.
Both reads run in one repeatable-read snapshot, so the counts and the values
describe the same rows. Other filters (project, type) sort the raw rows, as
``percentile_cont`` does.

The answer is ``avg`` and ``percentile_cont`` over the rows, exactly: the same
values, ranks and interpolation arithmetic (the mean is summed as numeric).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, time
from decimal import Decimal
from typing import Any

from psycopg import AsyncConnection

from api.filters import Filters
from api.flow_counts import whole_days
from api.percentiles import QUANTILES, needed_offsets, percentile_from_buckets

# Measure numbers in the histogram, and their columns.
MEASURES = {0: "cycle_time_s", 1: "lead_time_s"}


@dataclass(frozen=True)
class Stats:
    """One measure over the window, in seconds (None when there are no values)."""

    n: int
    mean: float | None
    percentiles: dict[float, float | None]


def histogram_scope(f: Filters) -> tuple[int, str] | None:
    """(grain, team) of the histogram rows answering ``f``, or None (raw rows)."""
    if f.project is not None or f.item_type is not None:
        return None
    return (0, "") if f.team is None else (1, f.team)


def raw_pieces(f: Filters) -> list[tuple[datetime, datetime]]:
    """The parts of ``[start, end)`` outside its whole days (read from the rows)."""
    first, last = whole_days(f)
    if first >= last:
        return [(f.start, f.end)]
    whole_from, whole_to = (datetime.combine(d, time(), tzinfo=UTC) for d in (first, last))
    return [(lo, hi) for lo, hi in ((f.start, whole_from), (whole_to, f.end)) if lo < hi]


async def duration_stats(conn: AsyncConnection[Any], f: Filters) -> dict[str, Stats]:
    """Cycle and lead time stats for ``f``, keyed by column name."""
    scope = histogram_scope(f)
    if scope is None:
        return await _raw_stats(conn, f)
    where, params = f.where()
    params = {**params, "start": f.start, "end": f.end, "grain": scope[0], "scope": scope[1]}
    parts = []
    whole_from, whole_to = whole_days(f)
    if whole_from < whole_to:
        params["whole_from"], params["whole_to"] = whole_from, whole_to
        parts.append(
            """select measure, bucket, n, total from completion_duration_histogram
               where grain = %(grain)s and team = %(scope)s
                 and day >= %(whole_from)s and day < %(whole_to)s"""
        )
    for i, (lo, hi) in enumerate(raw_pieces(f)):
        params[f"lo{i}"], params[f"hi{i}"] = lo, hi
        for measure, column in MEASURES.items():
            parts.append(
                f"""select {measure}::smallint as measure,
                           flow_duration_bucket({column}) as bucket,
                           1 as n, {column}::numeric as total
                    from completions
                    where completed_at >= %(lo{i})s and completed_at < %(hi{i})s
                      and {column} is not null and {where}"""
            )
    async with conn.transaction():
        await conn.execute("set transaction isolation level repeatable read")
        async with conn.cursor() as cur:
            await cur.execute(
                f"""select measure, bucket, sum(n)::bigint, sum(total)
                    from ({" union all ".join(parts)}) h
                    group by 1, 2 having sum(n) <> 0 order by 1, 2""",
                params,
            )
            counts: dict[int, list[tuple[int, int]]] = defaultdict(list)
            totals: dict[int, Decimal] = defaultdict(Decimal)
            for measure, bucket, n, total in await cur.fetchall():
                counts[measure].append((bucket, n))
                totals[measure] += total
            wanted = {m: needed_offsets(counts[m], QUANTILES) for m in MEASURES}
            # Per bucket read, its values from the first offset needed to the last.
            selects = []
            for measure, column in MEASURES.items():
                for bucket, (first, last) in wanted[measure].items():
                    key = f"{measure}_{bucket}"
                    params[f"b{key}"], params[f"o{key}"] = bucket, first
                    params[f"l{key}"] = last - first + 1
                    selects.append(
                        f"""(select {measure}::smallint, %(b{key})s::integer, %(o{key})s::integer,
                                    array(select {column} from completions
                                          where flow_duration_bucket({column}) = %(b{key})s
                                            and completed_at >= %(start)s
                                            and completed_at < %(end)s and {where}
                                          order by 1 offset %(o{key})s limit %(l{key})s))"""
                    )
            values: dict[tuple[int, int], tuple[int, list[float]]] = {}
            if selects:
                await cur.execute(" union all ".join(selects), params)
                for measure, bucket, first, read in await cur.fetchall():
                    values[measure, bucket] = (first, read)
    out = {}
    for measure, column in MEASURES.items():
        held = dict(counts[measure])
        if any(
            len(values[measure, b][1]) != last - first + 1
            for b, (first, last) in wanted[measure].items()
        ):
            # Cannot happen in one snapshot unless the histogram is out of step
            # with the rows; the rows are the truth.
            return await _raw_stats(conn, f)

        def value_at(bucket: int, offset: int, measure: int = measure) -> float:
            first, read = values[measure, bucket]
            return read[offset - first]

        n = sum(held.values())
        out[column] = Stats(
            n=n,
            mean=float(totals[measure] / n) if n else None,
            percentiles={
                q: percentile_from_buckets(counts[measure], value_at, q) for q in QUANTILES
            },
        )
    return out


async def _raw_stats(conn: AsyncConnection[Any], f: Filters) -> dict[str, Stats]:
    return {column: await raw_stats(conn, f, column) for column in MEASURES.values()}


async def raw_stats(conn: AsyncConnection[Any], f: Filters, column: str) -> Stats:
    """One measure's numbers from a sort of every value in the window."""
    where, params = f.where()
    percentiles = ", ".join(
        f"percentile_cont({q}) within group (order by {column})" for q in QUANTILES
    )
    async with conn.cursor() as cur:
        await cur.execute(
            f"""select count({column}), avg({column}), {percentiles} from completions
                where completed_at >= %(start)s and completed_at < %(end)s and {where}""",
            {**params, "start": f.start, "end": f.end},
        )
        row = await cur.fetchone()
    assert row is not None
    n, mean, *ps = row
    return Stats(
        n=int(n),
        mean=None if mean is None else float(mean),
        percentiles={
            q: None if p is None else float(p) for q, p in zip(QUANTILES, ps, strict=True)
        },
    )
