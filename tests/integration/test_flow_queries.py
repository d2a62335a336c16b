"""The WIP and throughput queries agree with a brute-force count on random data."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from api.filters import Filters
from api.flow_queries import flow_timeseries, wip_at

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _random_rows(seed: int) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    rng = random.Random(seed)
    stays, completions = [], []
    for n in range(300):
        entered = T0 + timedelta(hours=rng.uniform(-200, 1500))
        exited = None if rng.random() < 0.3 else entered + timedelta(hours=rng.uniform(0, 400))
        team = rng.choice(["A", "B"])
        state = rng.choice(["wip", "wip", "backlog", "done"])
        stays.append((f"i{n}", 0, "Development", 2, state, entered, exited, team, team, "Story"))
        if rng.random() < 0.5:
            done = entered + timedelta(hours=rng.uniform(0, 900))
            completions.append((f"i{n}", done, entered, entered, team, team, "Story", 1.0, 1.0))
    return stays, completions


def brute_wip(stays: list[tuple[object, ...]], at: datetime, team: str | None) -> int:
    return sum(
        1
        for s in stays
        if s[4] == "wip"
        and (team is None or s[7] == team)
        and s[5] <= at  # type: ignore[operator]
        and (s[6] is None or s[6] > at)  # type: ignore[operator]
    )


@pytest.mark.parametrize("interval", ["day", "week"])
@pytest.mark.parametrize("team", [None, "A"])
async def test_timeseries_matches_brute_force(db_dsn: str, interval: str, team: str | None) -> None:
    """Every bucket's WIP (at its end) and throughput equal a direct count."""
    stays, completions = _random_rows(11)
    async with await psycopg.AsyncConnection.connect(db_dsn) as conn:
        async with conn.cursor() as cur:
            async with cur.copy(
                "copy stage_intervals (item_id, seq, stage, stage_index, flow_state, entered_at,"
                " exited_at, team, project, item_type) from stdin"
            ) as copy:
                for row in stays:
                    await copy.write_row(row)
            async with cur.copy(
                "copy completions (item_id, completed_at, started_at, created_at, team, project,"
                " item_type, cycle_time_s, lead_time_s) from stdin"
            ) as copy:
                for row in completions:
                    await copy.write_row(row)
        await conn.commit()
        f = Filters(start=T0 + timedelta(hours=13), end=T0 + timedelta(days=45, hours=5), team=team)
        buckets = await flow_timeseries(conn, f, interval)
        assert buckets, "no buckets"
        for b in buckets:
            end = datetime.fromisoformat(b["end"])
            start = max(datetime.fromisoformat(b["start"]), f.start)
            assert b["wip"] == brute_wip(stays, end, team), b
            assert b["throughput"] == sum(
                1
                for c in completions
                if start <= c[1] < end and (team is None or c[4] == team)  # type: ignore[operator]
            ), b
        assert await wip_at(conn, f, f.end) == brute_wip(stays, f.end, team)
