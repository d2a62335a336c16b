"""Stage arrivals and the CFD counters stay equal to a recomputation from stage_intervals.

The fold rewrites an item's stays on every event (delete, then copy — as
``processor.work_item_store.replace_rows`` does); the triggers of revision
0003 must leave ``stage_arrivals``, ``daily_cfd_arrivals`` and
``cfd_arrival_totals`` exactly as a from-scratch computation would, whatever
the order, the batching, reopenings, removals and deletions.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processor.stages import load_stage_config
from processor.work_items import StageIntervalRow, WorkItemEvent, fold_work_item
from schemas.events import WorkItemDeleted, WorkItemTransitioned, WorkItemUpserted

pytestmark = pytest.mark.integration

CONFIG = load_stage_config()
T0 = datetime(2024, 3, 4, tzinfo=UTC)
STATUSES = ["To Do", "Selected for Development", "In Progress", "In Review", "Staging",
            "Done", "Won't Do"]
COLUMNS = ", ".join(StageIntervalRow._fields)


@pytest.fixture
def conn(db_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(db_dsn, autocommit=True) as c:
        yield c


def history(item: str, team: str, moves: list[tuple[int, str]], deleted: bool
            ) -> list[WorkItemEvent]:
    """An item created at T0 + the first offset (hours), then moved at each later offset."""
    def envelope(n: int, at: datetime) -> dict[str, Any]:
        return {"event_id": f"{item}-{n}", "source": "jira", "occurred_at": at,
                "received_at": at, "key": item, "item_id": item}

    first_at = T0 + timedelta(hours=moves[0][0])
    events: list[WorkItemEvent] = [
        WorkItemUpserted(**envelope(0, first_at), display_key=item, team=team, project=team,
                         item_type="Story", status=moves[0][1], created_at=first_at),
    ]
    previous = None
    elapsed = 0
    for n, (hours, status) in enumerate(moves, start=1):
        elapsed += hours
        events.append(WorkItemTransitioned(**envelope(n, T0 + timedelta(hours=elapsed)),
                                           from_status=previous, to_status=status))
        previous = status
    if deleted:
        events.append(WorkItemDeleted(**envelope(99, T0 + timedelta(hours=elapsed + 1))))
    return events


def write(conn: psycopg.Connection[Any], batch: dict[str, list[WorkItemEvent]]) -> None:
    """One processor batch: replace the stays of these items in one transaction."""
    rows = [tuple(i) for item, events in batch.items()
            for i in fold_work_item(item, events, CONFIG).intervals]
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("delete from stage_intervals where item_id = any(%s)", (list(batch),))
        if rows:
            with cur.copy(f"copy stage_intervals ({COLUMNS}) from stdin") as copy:
                for row in rows:
                    copy.write_row(row)


def expected_arrivals(conn: psycopg.Connection[Any]) -> dict[tuple[Any, ...], datetime]:
    """First arrival per item at or past each stage, recomputed in Python."""
    stays: dict[str, list[tuple[Any, ...]]] = {}
    for row in conn.execute(
        "select item_id, seq, stage_index, entered_at, flow_state, team, project, item_type "
        "from stage_intervals order by item_id, seq"
    ):
        stays.setdefault(row[0], []).append(row)
    arrivals: dict[tuple[Any, ...], datetime] = {}
    for item, rows in stays.items():
        if rows[-1][4] == "removed":
            continue
        for _, _, index, entered, _, team, project, item_type in rows:
            for k in range(index + 1):
                arrivals.setdefault((item, k, team, project, item_type), entered)
    return arrivals


def assert_counters_match(conn: psycopg.Connection[Any]) -> None:
    arrivals = expected_arrivals(conn)
    stored = {
        (item, k, team, project, item_type): at
        for item, k, at, team, project, item_type in conn.execute(
            "select item_id, stage_index, arrived_at, team, project, item_type "
            "from stage_arrivals")
    }
    assert stored == arrivals
    daily: Counter[tuple[Any, ...]] = Counter()
    totals: Counter[tuple[Any, ...]] = Counter()
    for (_, k, team, project, item_type), at in arrivals.items():
        daily[(at.astimezone(UTC).date(), team, project, item_type, k)] += 1
        totals[(team, project, item_type, k)] += 1
    stored_daily = {tuple(r[:5]): r[5] for r in conn.execute(
        "select day, team, project, item_type, stage_index, arrivals "
        "from daily_cfd_arrivals where arrivals <> 0")}
    stored_totals = {tuple(r[:4]): r[4] for r in conn.execute(
        "select team, project, item_type, stage_index, arrivals "
        "from cfd_arrival_totals where arrivals <> 0")}
    assert stored_daily == dict(daily)
    assert stored_totals == dict(totals)
    assert conn.execute("select count(*) from stage_arrivals_pending").fetchone() == (0,)


moves_strategy = st.lists(
    st.tuples(st.integers(min_value=0, max_value=40), st.sampled_from(STATUSES)),
    min_size=1, max_size=6,
)
item_strategy = st.tuples(st.sampled_from(["A", "B"]), moves_strategy, st.booleans())


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    items=st.lists(item_strategy, min_size=1, max_size=5),
    cuts=st.lists(st.integers(min_value=0, max_value=8), min_size=1, max_size=4),
)
def test_counters_follow_every_refold(
    conn: psycopg.Connection[Any],
    items: list[tuple[str, list[tuple[int, str]], bool]],
    cuts: list[int],
) -> None:
    """After each batch — growing histories, reopen, removal, deletion — the counters
    equal a recomputation, and a rebuild changes nothing."""
    conn.execute("truncate stage_intervals")
    full = {f"i{n}": history(f"i{n}", team, moves, deleted)
            for n, (team, moves, deleted) in enumerate(items)}
    for cut in [*cuts, 99]:  # the histories arrive in prefixes, the last batch complete
        write(conn, {item: events[:cut + 1] for item, events in full.items()})
        assert_counters_match(conn)
    conn.execute("select rebuild_stage_arrivals()")
    assert_counters_match(conn)


def test_truncate_empties_the_counters(conn: psycopg.Connection[Any]) -> None:
    """Truncating the stays (a rebuild) truncates what was derived from them."""
    write(conn, {"x": history("x", "A", [(0, "To Do"), (5, "Done")], False)})
    conn.execute("truncate stage_intervals")
    assert conn.execute("select count(*) from daily_cfd_arrivals").fetchone() == (0,)
    assert conn.execute("select count(*) from cfd_arrival_totals").fetchone() == (0,)


def cfd_by_brute_force(conn: psycopg.Connection[Any], day: date, team: str | None
                       ) -> dict[int, int]:
    end = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    counts: Counter[int] = Counter()
    for (_, k, t, _, _), at in expected_arrivals(conn).items():
        if at < end and (team is None or t == team):
            counts[k] += 1
    return dict(counts)


def test_cfd_function_matches_a_recount_on_every_day(conn: psycopg.Connection[Any]) -> None:
    """cfd_counts (API) and analytics.cfd (SQL users) agree with a recount, day by day."""
    batch = {
        f"c{n}": history(f"c{n}", "AB"[n % 2],
                         [(n * 7 % 30, "To Do"), (n * 13 % 50, "In Progress"),
                          (n * 5 % 40, "In Review" if n % 3 else "To Do"),
                          (n * 11 % 60, "Done" if n % 4 else "Won't Do")], n % 9 == 0)
        for n in range(30)
    }
    write(conn, batch)
    first, after = date(2024, 3, 5), date(2024, 3, 12)
    for team in (None, "A"):
        api = conn.execute("select day, stage_index, items from cfd_counts(%s, %s, %s)",
                           (first, after, team)).fetchall()
        sql = conn.execute("select day, stage_index, items from analytics.cfd(%s, %s, %s)",
                           (first, after, team)).fetchall()
        assert api == sql
        for day in (first + timedelta(days=i) for i in range((after - first).days)):
            got = {k: n for d, k, n in api if d == day and n}
            assert got == cfd_by_brute_force(conn, day, team), day


def test_concurrent_batches_neither_deadlock_nor_lose_counts(db_dsn: str) -> None:
    """Processors folding different items of the same team and days at once."""
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            with psycopg.connect(db_dsn, autocommit=True) as c:
                for round_ in range(15):
                    batch = {
                        f"w{offset}-{n}": history(
                            f"w{offset}-{n}", "A",
                            [(n, "To Do"), (round_ % 5 + n, "In Progress"),
                             (24 - n, "Done")][: 1 + (round_ + n) % 3], False)
                        for n in range(6)
                    }
                    write(c, batch)
        except BaseException as exc:  # reported below, with the thread's context
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with psycopg.connect(db_dsn, autocommit=True) as c:
        assert_counters_match(c)
