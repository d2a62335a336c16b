"""The daily flow counters (revision 0008) and the API numbers read from them agree
with a brute-force count over the rows, whatever writes came before."""

from __future__ import annotations

import math
import random
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from api.deps import configure_read_only
from api.filters import Filters
from api.flow_counts import wip_at
from api.flow_queries import flow_metrics, flow_timeseries
from tests.integration.flow_rows import COMPLETION_COLUMNS, instant

pytestmark = pytest.mark.integration

STAY_COLUMNS = (
    "item_id, seq, stage, stage_index, flow_state, entered_at, exited_at, team, project, item_type"
)
Row = tuple[Any, ...]


def _stays(rng: random.Random, n: int, prefix: str) -> list[Row]:
    rows = []
    for i in range(n):
        entered = instant(rng, -20, 40)
        exited = None if rng.random() < 0.3 else max(entered, instant(rng, -20, 40))
        team = rng.choice(["A", "B"])
        state = rng.choice(["wip", "wip", "backlog", "done", "removed"])
        item_type = rng.choice(["Story", "Bug"])
        rows.append(
            (f"{prefix}{i}", 0, "Dev", 2, state, entered, exited, team, f"P{team}", item_type)
        )
    return rows


def _completions(rng: random.Random, n: int, prefix: str) -> list[Row]:
    rows = []
    for i in range(n):
        done = instant(rng, -20, 40)
        team = rng.choice(["A", "B"])
        cycle, lead = rng.uniform(0, 9e5), rng.uniform(0, 2e6)
        rows.append(
            (
                f"{prefix}{i}",
                done,
                done,
                done,
                team,
                f"P{team}",
                rng.choice(["Story", "Bug"]),
                cycle,
                lead,
            )
        )
    return rows


def _copy(conn: psycopg.Connection[Any], table: str, columns: str, rows: list[Row]) -> None:
    with conn.cursor() as cur, cur.copy(f"copy {table} ({columns}) from stdin") as copy:
        for row in rows:
            copy.write_row(row)


def _brute_counters(conn: psycopg.Connection[Any]) -> Counter[tuple[Any, ...]]:
    """(day, team, project, type, column) -> count, straight from the definitions."""
    counts: Counter[tuple[Any, ...]] = Counter()

    def wip_day(t: datetime) -> date:
        return (t - timedelta(microseconds=1)).astimezone(UTC).date()

    for entered, exited, team, project, item_type in conn.execute(
        "select entered_at, exited_at, team, project, item_type from stage_intervals "
        "where flow_state = 'wip'"
    ):
        counts[(wip_day(entered), team, project, item_type, "wip_net")] += 1
        if exited is not None:
            counts[(wip_day(exited), team, project, item_type, "wip_net")] -= 1
    for done, team, project, item_type in conn.execute(
        "select completed_at, team, project, item_type from completions"
    ):
        counts[(done.astimezone(UTC).date(), team, project, item_type, "completed")] += 1
    return Counter({k: v for k, v in counts.items() if v})


def _stored_counters(conn: psycopg.Connection[Any]) -> Counter[tuple[Any, ...]]:
    counts: Counter[tuple[Any, ...]] = Counter()
    for day, team, project, item_type, wip_net, completed in conn.execute(
        "select day, team, project, item_type, wip_net, completed from daily_flow_counts"
    ):
        counts[(day, team, project, item_type, "wip_net")] += wip_net
        counts[(day, team, project, item_type, "completed")] += completed
    return Counter({k: v for k, v in counts.items() if v})


def test_counters_follow_inserts_deletes_updates_and_truncates(db_dsn: str) -> None:
    """After any mix of committed and rolled-back writes, the counters are the rows' counts."""
    rng = random.Random(5)
    with psycopg.connect(db_dsn) as conn:
        _copy(conn, "stage_intervals", STAY_COLUMNS, _stays(rng, 400, "s"))
        _copy(conn, "completions", COMPLETION_COLUMNS, _completions(rng, 200, "c"))
        conn.commit()
        assert _stored_counters(conn) == _brute_counters(conn)

        # The processor's pattern: delete changed rows, insert their replacements.
        conn.execute("delete from stage_intervals where item_id like 's1%'")
        conn.execute("delete from completions where item_id like 'c1%'")
        _copy(conn, "stage_intervals", STAY_COLUMNS, _stays(rng, 150, "t"))
        _copy(conn, "completions", COMPLETION_COLUMNS, _completions(rng, 80, "d"))
        conn.execute(
            "update stage_intervals set exited_at = entered_at + interval '1 day' "
            "where exited_at is null and item_id like 's2%'"
        )
        conn.execute("update stage_intervals set flow_state = 'wip' where item_id like 's3%'")
        conn.execute(
            "update completions set completed_at = completed_at + interval '36 hours', "
            "team = 'C' where item_id like 'c2%'"
        )
        conn.commit()
        assert _stored_counters(conn) == _brute_counters(conn)

        before = _stored_counters(conn)
        conn.execute("delete from stage_intervals where item_id like 's4%'")
        _copy(conn, "completions", COMPLETION_COLUMNS, _completions(rng, 30, "e"))
        conn.rollback()
        assert _stored_counters(conn) == before

        conn.execute("truncate completions")
        _copy(conn, "completions", COMPLETION_COLUMNS, _completions(rng, 20, "f"))
        conn.commit()
        assert _stored_counters(conn) == _brute_counters(conn)
        conn.execute("truncate stage_intervals")
        conn.commit()
        assert _stored_counters(conn) == _brute_counters(conn)

        _copy(conn, "stage_intervals", STAY_COLUMNS, _stays(rng, 100, "g"))
        conn.commit()
        conn.execute("select rebuild_daily_flow_counts()")
        conn.commit()
        assert _stored_counters(conn) == _brute_counters(conn)


def _brute_wip(stays: list[Row], at: datetime, f: Filters) -> int:
    return sum(
        1
        for s in stays
        if s[4] == "wip"
        and _selected(s[7], s[8], s[9], f)
        and s[5] <= at
        and (s[6] is None or s[6] > at)
    )


def _selected(team: str, project: str, item_type: str, f: Filters) -> bool:
    return (
        (f.team is None or team == f.team)
        and (f.project is None or project == f.project)
        and (f.item_type is None or item_type == f.item_type)
    )


def _percentile_cont(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _windows(rng: random.Random) -> list[Filters]:
    windows = []
    for _ in range(12):
        start = instant(rng, -20, 40)
        end = max(start + timedelta(microseconds=1), instant(rng, -20, 40))
        windows.append(
            Filters(
                start=start,
                end=end,
                team=rng.choice([None, "A", "B"]),
                project=rng.choice([None, None, "PA"]),
                item_type=rng.choice([None, None, "Bug"]),
            )
        )
    return windows


async def test_timeseries_wip_and_metrics_match_brute_force_at_day_edges(db_dsn: str) -> None:
    """Windows starting and ending on, just before and just after midnights: every
    bucket, WIP at ``end`` and the /metrics numbers equal a direct count."""
    rng = random.Random(9)
    stays, completions = _stays(rng, 500, "s"), _completions(rng, 300, "c")
    with psycopg.connect(db_dsn) as conn:
        _copy(conn, "stage_intervals", STAY_COLUMNS, stays)
        _copy(conn, "completions", COMPLETION_COLUMNS, completions)
        conn.commit()
    pool = AsyncConnectionPool(
        db_dsn, min_size=1, max_size=3, open=False, configure=configure_read_only
    )
    async with pool:
        for f in _windows(rng):
            assert await _wip(pool, f) == _brute_wip(stays, f.end, f), f
            for interval in ("day", "week"):
                async with pool.connection() as conn:
                    buckets = await flow_timeseries(conn, f, interval)
                assert buckets, f
                for b in buckets:
                    start = max(datetime.fromisoformat(b["start"]), f.start)
                    end = datetime.fromisoformat(b["end"])
                    assert b["wip"] == _brute_wip(stays, end, f), (f, interval, b)
                    assert b["throughput"] == sum(
                        1
                        for c in completions
                        if start <= c[1] < end and _selected(c[4], c[5], c[6], f)
                    ), (f, interval, b)
            got = await flow_metrics(pool, f)
            done = [
                c for c in completions if f.start <= c[1] < f.end and _selected(c[4], c[5], c[6], f)
            ]
            assert got["throughput"] == len(done)
            assert got["wip"] == _brute_wip(stays, f.end, f)
            for key, column in (("cycle_time_hours", 7), ("lead_time_hours", 8)):
                values = [c[column] for c in done]
                expected = {
                    f"p{round(q * 100)}": _percentile_cont(values, q) for q in (0.5, 0.85, 0.95)
                }
                for name, value in expected.items():
                    want = None if value is None else round(value / 3600, 4)
                    assert got[key][name] == pytest.approx(want, abs=1e-4), (f, key, name)


async def _wip(pool: AsyncConnectionPool, f: Filters) -> int:
    async with pool.connection() as conn:
        return await wip_at(conn, f, f.end)
