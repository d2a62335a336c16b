"""TimescaleDB-or-plain helpers for migrations.

With the extension: hypertables and real-time continuous aggregates with
refresh policies. Without it: the same relation names as plain tables and
views, which give the same results (a plain view is always fresh).
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import text


def ensure_timescaledb() -> bool:
    """Create the extension when the server offers it; report whether it is on."""
    conn = op.get_bind()
    have = conn.execute(text("select 1 from pg_extension where extname='timescaledb'")).first()
    if have:
        return True
    offered = conn.execute(
        text("select 1 from pg_available_extensions where name='timescaledb'")
    ).first()
    if not offered:
        return False
    # Offered but not preloaded (shared_preload_libraries) makes CREATE fail;
    # that server is then plain PostgreSQL to us.
    nested = conn.begin_nested()
    try:
        conn.execute(text("create extension if not exists timescaledb"))
    except Exception:
        nested.rollback()
        return False
    nested.commit()
    return True


def hypertable(table: str, time_column: str, chunk: str = "7 days") -> None:
    if ensure_timescaledb():
        op.execute(
            f"select create_hypertable('{table}', by_range('{time_column}', "
            f"interval '{chunk}'), if_not_exists => true, migrate_data => true)"
        )


def continuous_aggregate(
    name: str,
    time_column: str,
    select_sql: str,
    *,
    start_offset: str = "90 days",
    schedule: str = "5 minutes",
) -> None:
    """``select_sql`` names its daily bucket ``{day}``: it becomes
    ``time_bucket('1 day', <time_column>)`` under TimescaleDB and the identical
    UTC-midnight ``date_trunc('day', <time_column>, 'UTC')`` in a plain view."""
    if ensure_timescaledb():
        sql = select_sql.format(day=f"time_bucket('1 day', {time_column})")
        op.execute(
            f"create materialized view {name} with (timescaledb.continuous, "
            f"timescaledb.materialized_only = false) as {sql} with no data"
        )
        op.execute(
            f"select add_continuous_aggregate_policy('{name}', start_offset => interval "
            f"'{start_offset}', end_offset => interval '1 hour', schedule_interval => "
            f"interval '{schedule}')"
        )
    else:
        sql = select_sql.format(day=f"date_trunc('day', {time_column}, 'UTC')")
        op.execute(f"create view {name} as {sql}")


def drop_continuous_aggregate(name: str) -> None:
    if ensure_timescaledb():
        op.execute(f"drop materialized view if exists {name}")
    else:
        op.execute(f"drop view if exists {name}")
