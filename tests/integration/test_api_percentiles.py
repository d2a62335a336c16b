"""Cycle/lead time from the duration histogram (revision 0009) equal ``avg`` and
``percentile_cont`` over the raw rows, whatever writes came before."""

from __future__ import annotations

import importlib
import random
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from api.deps import configure_read_only
from api.duration_stats import Stats, duration_stats, histogram_scope
from api.filters import Filters
from api.flow_queries import flow_metrics
from api.percentiles import QUANTILES
from tests.integration.flow_rows import COMPLETION_COLUMNS, T0, instant

pytestmark = pytest.mark.integration

TEAMS = {"A": ("PA", "PX"), "B": ("PB",), "C": ("PC", "PX")}
Row = tuple[Any, ...]


def _duration(rng: random.Random) -> float:
    """Ties, zeros, sub-second values, bucket edges and spread-out values."""
    return rng.choice(
        [
            0.0,
            float(rng.randint(0, 4)) * 3600,  # ties
            rng.uniform(0, 2),
            rng.choice([1.0, 2.718281828459045, 1e12, 1e12 + 1]),
            rng.lognormvariate(11, 1.2),
            rng.lognormvariate(11, 1.2),
            rng.lognormvariate(11, 1.2),
        ]
    )


def _rows(rng: random.Random, n: int, prefix: str) -> list[Row]:
    rows = []
    for i in range(n):
        done = instant(rng, -10, 10)
        team = rng.choice(sorted(TEAMS))
        cycle = _duration(rng)
        lead = None if rng.random() < 0.15 else cycle + _duration(rng)
        rows.append(
            (
                f"{prefix}{i}",
                done,
                done,
                None if lead is None else done,
                team,
                rng.choice(TEAMS[team]),
                rng.choice(["Story", "Bug", "Task"]),
                cycle,
                lead,
            )
        )
    return rows


def _copy(conn: psycopg.Connection[Any], rows: list[Row]) -> None:
    statement = f"copy completions ({COMPLETION_COLUMNS}) from stdin"
    with conn.cursor() as cur, cur.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)


_BRUTE_HISTOGRAM = """
    select g.grain, case when g.grain = 0 then '' else c.team end,
           (c.completed_at at time zone 'UTC')::date, m.measure,
           flow_duration_bucket(m.v), count(*), sum(m.v::numeric)
    from completions c
    cross join (values (0), (1)) g(grain)
    cross join lateral (values (0, c.cycle_time_s), (1, c.lead_time_s)) m(measure, v)
    where m.v is not null
    group by 1, 2, 3, 4, 5
"""


def _histogram(conn: psycopg.Connection[Any]) -> set[Row]:
    return {
        tuple(r)
        for r in conn.execute(
            "select grain, team, day, measure, bucket, n, total "
            "from completion_duration_histogram where n <> 0 or total <> 0"
        )
    }


def _brute_histogram(conn: psycopg.Connection[Any]) -> set[Row]:
    return {tuple(r) for r in conn.execute(_BRUTE_HISTOGRAM)}


def _write_mixture(conn: psycopg.Connection[Any], rng: random.Random) -> None:
    """Inserts, the processor's delete-and-reinsert, updates of every kind, a rollback."""
    _copy(conn, _rows(rng, 600, "a"))
    conn.commit()
    assert _histogram(conn) == _brute_histogram(conn)

    conn.execute("delete from completions where item_id like 'a1%'")
    _copy(conn, _rows(rng, 150, "b"))
    conn.execute(
        "update completions set completed_at = completed_at + interval '30 hours', "
        "team = 'B', project = 'PB' where item_id like 'a2%'"
    )
    conn.execute("update completions set lead_time_s = null where item_id like 'a3%'")
    conn.execute(
        "update completions set lead_time_s = cycle_time_s * 2 + 1 "
        "where lead_time_s is null and item_id like 'b%'"
    )
    conn.execute("update completions set cycle_time_s = 0 where item_id like 'a4%'")
    conn.execute("update completions set cycle_time_s = cycle_time_s where item_id like 'a5%'")
    conn.commit()
    assert _histogram(conn) == _brute_histogram(conn)

    before = _histogram(conn)
    conn.execute("delete from completions where item_id like 'a6%'")
    _copy(conn, _rows(rng, 40, "r"))
    conn.rollback()
    assert _histogram(conn) == before


def test_histogram_follows_writes_truncate_and_rebuild(db_dsn: str) -> None:
    rng = random.Random(11)
    with psycopg.connect(db_dsn) as conn:
        _write_mixture(conn, rng)
        conn.execute("truncate completions")
        _copy(conn, _rows(rng, 30, "t"))
        conn.commit()
        assert _histogram(conn) == _brute_histogram(conn)
        conn.execute("delete from completion_duration_histogram")
        conn.execute("select rebuild_completion_duration_histogram()")
        conn.commit()
        assert _histogram(conn) == _brute_histogram(conn)


def test_row_triggers_of_the_hypertable_path_keep_it_too(db_dsn: str) -> None:
    """Under TimescaleDB completions gets row triggers instead of statement ones;
    the same writes through them give the same histogram."""
    revision = importlib.import_module("infra.migrations.versions.0009_duration_histogram")
    rng = random.Random(17)
    with psycopg.connect(db_dsn) as conn:
        for event in ("insert", "delete", "update"):
            conn.execute(f"drop trigger completions_histogram_on_{event} on completions")
        conn.execute("drop function completion_histogram_mark()")
        conn.execute(revision._ROW_MARKER)
        conn.execute(
            "create trigger completions_histogram after insert or update or delete "
            "on completions for each row execute function completion_histogram_mark()"
        )
        conn.commit()
        _write_mixture(conn, rng)


def test_buckets_are_in_value_order(db_dsn: str) -> None:
    """Bucket order must be value order: ranks are counted through it."""
    with psycopg.connect(db_dsn) as conn:
        row = conn.execute(
            """with v(x) as (
                   select unnest(array['-Infinity', -5, 0, 0.5, 0.999999, 1, 1.0000001, 2.718281828,
                                       2.718281829, 3600, 1e6, 1e12 - 1, 1e12, 1e15,
                                       'Infinity', 'NaN']::float8[])
                   union all select exp(g / 64.0) from generate_series(-100, 1800) g)
               select bool_and(b >= prev), count(distinct b)
               from (select flow_duration_bucket(x) b,
                            lag(flow_duration_bucket(x)) over (order by x) prev from v) s
               where prev is not null"""
        ).fetchone()
        assert row is not None and row[0] is True and row[1] > 100


def _windows(rng: random.Random) -> list[Filters]:
    """Windows on midnights and cut mid-day, short and long, with every filter kind."""
    out = []
    for i in range(40):
        start = instant(rng, -10, 10)
        if i % 4 == 0:
            start = start.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + rng.choice(
            [
                timedelta(days=rng.randint(1, 15)),
                timedelta(hours=rng.uniform(0.1, 60)),
                timedelta(days=rng.randint(1, 15), hours=rng.uniform(0, 24)),
            ]
        )
        team = rng.choice([None, None, "A", "B", "C", "Z"])
        out.append(
            Filters(
                start=start,
                end=end,
                team=team,
                project=rng.choice([None, None, None, "PX", "PB"]),
                item_type=rng.choice([None, None, None, "Bug"]),
            )
        )
    # An empty window, and one before all the data.
    out.append(Filters(start=T0 + timedelta(days=30), end=T0 + timedelta(days=31)))
    out.append(Filters(start=T0 - timedelta(days=90), end=T0 - timedelta(days=60), team="A"))
    return out


def _raw(conn: psycopg.Connection[Any], f: Filters, column: str) -> tuple[Any, ...]:
    where, params = f.where()
    row = conn.execute(
        f"""select count({column}), avg({column}),
                   percentile_cont(0.5) within group (order by {column}),
                   percentile_cont(0.85) within group (order by {column}),
                   percentile_cont(0.95) within group (order by {column})
            from completions
            where completed_at >= %(start)s and completed_at < %(end)s and {where}""",
        {**params, "start": f.start, "end": f.end},
    ).fetchone()
    assert row is not None
    return tuple(row)


def _assert_equal(got: Stats, want: tuple[Any, ...], context: Any) -> None:
    n, mean, *ps = want
    assert got.n == n, context
    if mean is None:
        assert got.mean is None, context
    else:
        assert got.mean == pytest.approx(mean, rel=1e-12, abs=1e-9), context
    # The same floats, not approximately: the same values, ranks and arithmetic.
    assert [got.percentiles[q] for q in QUANTILES] == ps, context


async def test_stats_equal_percentile_cont_over_the_rows(db_dsn: str) -> None:
    rng = random.Random(23)
    with psycopg.connect(db_dsn) as conn:
        _write_mixture(conn, rng)
        # Most of the values in few buckets: ranks land in shared, crowded buckets.
        _copy(conn, [(*r[:7], 7200.0, 7200.0 + (i % 3)) for i, r in enumerate(_rows(rng, 80, "z"))])
        conn.commit()
    windows = _windows(rng)
    assert any(histogram_scope(f) for f in windows) and not all(histogram_scope(f) for f in windows)
    pool = AsyncConnectionPool(
        db_dsn, min_size=1, max_size=2, open=False, configure=configure_read_only
    )
    async with pool:
        with psycopg.connect(db_dsn) as raw:
            nonempty = 0
            for f in windows:
                async with pool.connection() as conn:
                    got = await duration_stats(conn, f)
                for column in ("cycle_time_s", "lead_time_s"):
                    want = _raw(raw, f, column)
                    _assert_equal(got[column], want, (f, column))
                    nonempty += want[0] > 0
                metrics = await flow_metrics(pool, f)
                assert metrics["throughput"] == _raw(raw, f, "cycle_time_s")[0]
                for key, column in (
                    ("cycle_time_hours", "cycle_time_s"),
                    ("lead_time_hours", "lead_time_s"),
                ):
                    _, mean, *ps = _raw(raw, f, column)
                    expected = [mean, *ps]
                    assert [metrics[key][k] for k in ("mean", "p50", "p85", "p95")] == [
                        None if v is None else round(float(v) / 3600, 4) for v in expected
                    ], (f, key)
            assert nonempty > 40  # the windows are not all empty
            empty = await flow_metrics(pool, windows[-2])
            assert empty["throughput"] == 0
            assert set(empty["cycle_time_hours"].values()) == {None}
            assert set(empty["lead_time_hours"].values()) == {None}
