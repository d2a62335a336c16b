"""Daily histograms of cycle and lead time, so exact percentiles read a few buckets.

Revision ID: 0009_duration_histogram
Revises: 0008_daily_flow_counts

``completion_duration_histogram`` holds, per UTC day of ``completed_at``, per
scope (``grain`` 0: all teams, ``team`` = ''; ``grain`` 1: one team), per measure
(0: ``cycle_time_s``, 1: ``lead_time_s``) and per bucket of the value, the number
of non-null values (``n``) and their sum (``total``, numeric: a value added and
taken away again cancels exactly).

Buckets are ``flow_duration_bucket(v)``, the one definition of their edges: an
immutable SQL function, used by the triggers, the rebuild, the expression indexes
and every API query (the API never computes a bucket itself, it only orders them).
It is nondecreasing in ``v`` (bucket order is value order): 0 below one second,
``floor(16 · ln v)`` up to 10^12 s (16 buckets per factor e, each ≈ 6.5 % wide),
``1000`` for larger values, infinities and NaN (which PostgreSQL orders last).
Not STRICT, so that PostgreSQL inlines it (≈ 3x cheaper per row than a call).

Scopes: the two the API answers from the histogram, all teams and one team. A
per-(team, project, item_type) histogram has about one cell per completion in
a 90-day window, no fewer rows to sum than the window has values; the all-teams
rollup is 14,000 rows for 90 days at 10 M transitions (docs/metrics.md, with the bucket
resolution measured). Other filter combinations keep reading the raw rows.

The histogram is kept in step with ``completions`` as revision 0008 keeps the
daily counters: each statement (plain PostgreSQL, transition tables) or row
(a TimescaleDB hypertable) adds its net change to an unlogged pending table, and
a deferred trigger folds the transaction's pending rows at commit, upserting in
key order (the deferred trigger fires per statement, on a token table, rather
than per pending row as 0008's: these changes are many more rows).

Indexes ``completions (flow_duration_bucket(cycle_time_s), completed_at)`` and
the same for lead time, covering the value and ``team``: "the values of this
measure in bucket b completed in [start, end)" is one short index-only range scan.
"""

from __future__ import annotations

from alembic import op

from infra.migrations.timescale import ensure_timescaledb

revision = "0009_duration_histogram"
down_revision = "0008_daily_flow_counts"
branch_labels = None
depends_on = None

# Buckets per factor e: measured in docs/metrics.md (cells summed vs values read).
BUCKETS_PER_E = 16
HISTOGRAM_COLUMNS = "grain, team, day, measure, bucket, n, total"
# One cell of the histogram, as stored and as queued for the commit-time fold.
CELL_DDL = """
            grain   smallint not null,
            team    text not null,
            day     date not null,
            measure smallint not null,
            bucket  integer not null,
            n       integer not null,
            total   numeric not null"""
KEY = "grain, team, day, measure, bucket"

BUCKET_FUNCTION = f"""
    create function flow_duration_bucket(v double precision) returns integer
    language sql immutable parallel safe as $$
      select case when v is null then null
                  when v < 1 then 0
                  when v < 1e12 then floor(ln(v) * {BUCKETS_PER_E})::integer
                  else 1000 end
    $$
"""


def _changes(rows: str, sign: str) -> str:
    """Histogram changes of some ``completions`` rows (``rows`` aliased r), times ``sign``."""
    return f"""
        select g.grain, case when g.grain = 0 then '' else r.team end as team,
               (r.completed_at at time zone 'UTC')::date as day, m.measure,
               flow_duration_bucket(m.v) as bucket, {sign}::integer as n,
               {sign} * m.v::numeric as total
        from {rows} r
        cross join (values (0::smallint), (1::smallint)) g(grain)
        cross join lateral (values (0::smallint, r.cycle_time_s),
                                   (1::smallint, r.lead_time_s)) m(measure, v)
        where m.v is not null
    """


def _pending_from(changes: str) -> str:
    return f"""
        insert into completion_histogram_pending ({HISTOGRAM_COLUMNS})
        select {KEY}, sum(c.n), sum(c.total)
        from ({changes}) c
        group by {KEY}
        having sum(c.n) <> 0 or sum(c.total) <> 0;
        if found then
          insert into completion_histogram_flushes default values;
        end if;
    """


_STATEMENT_MARKER = f"""
    create function completion_histogram_mark() returns trigger language plpgsql as $$
    begin
      if tg_op = 'INSERT' then
        {_pending_from(_changes("new_rows", "1"))}
      elsif tg_op = 'DELETE' then
        {_pending_from(_changes("old_rows", "-1"))}
      else
        {_pending_from(_changes("new_rows", "1") + " union all " + _changes("old_rows", "-1"))}
      end if;
      return null;
    end $$
"""

_ROW_MARKER = f"""
    create function completion_histogram_mark() returns trigger language plpgsql as $$
    begin
      if tg_op in ('UPDATE', 'DELETE') then
        insert into completion_histogram_pending ({HISTOGRAM_COLUMNS})
        select {KEY}, n, total from ({_changes("(select old.*) ", "-1")}) c;
      end if;
      if tg_op in ('UPDATE', 'INSERT') then
        insert into completion_histogram_pending ({HISTOGRAM_COLUMNS})
        select {KEY}, n, total from ({_changes("(select new.*) ", "1")}) c;
      end if;
      insert into completion_histogram_flushes default values;
      return null;
    end $$
"""


def upgrade() -> None:
    op.execute(BUCKET_FUNCTION)
    op.execute(
        f"""
        create table completion_duration_histogram ({CELL_DDL},
            primary key ({KEY}) include (n, total)
        ) with (fillfactor = 80)
        """
    )
    op.execute(
        f"""
        create unlogged table completion_histogram_pending (
            id      bigint generated always as identity primary key,{CELL_DDL}
        )
        """
    )
    op.execute(
        "create unlogged table completion_histogram_flushes "
        "(id bigint generated always as identity primary key)"
    )
    # As daily_flow_flush (0008): the first deferred call of a transaction folds
    # every pending row, the later ones find theirs gone; key order keeps
    # concurrent committers deadlock-free. The deferred trigger is on a token per
    # statement (per row on the hypertable path), not per pending row: a batch
    # that rewrites 5,000 completions queues tens of thousands of pending rows.
    op.execute(
        f"""
        create function completion_histogram_flush() returns trigger language plpgsql as $$
        begin
          if not exists (select 1 from completion_histogram_flushes where id = new.id) then
            return null;
          end if;
          delete from completion_histogram_flushes;
          with taken as (delete from completion_histogram_pending returning *)
          insert into completion_duration_histogram as h ({HISTOGRAM_COLUMNS})
          select {KEY}, sum(t.n), sum(t.total)
          from taken t
          group by {KEY}
          having sum(t.n) <> 0 or sum(t.total) <> 0
          order by {KEY}
          on conflict ({KEY}) do update
            set n = h.n + excluded.n, total = h.total + excluded.total;
          return null;
        end $$
        """
    )
    op.execute(
        """
        create function completion_histogram_truncate() returns trigger language plpgsql as $$
        begin
          delete from completion_histogram_pending;
          delete from completion_duration_histogram;
          return null;
        end $$
        """
    )
    op.execute(
        f"""
        create function rebuild_completion_duration_histogram() returns void
        language plpgsql as $$
        begin
          delete from completion_histogram_pending;
          truncate completion_duration_histogram;
          insert into completion_duration_histogram ({HISTOGRAM_COLUMNS})
          select {KEY}, sum(c.n), sum(c.total)
          from ({_changes("completions", "1")}) c
          group by {KEY}
          order by {KEY};
        end $$
        """
    )
    if ensure_timescaledb():
        # A hypertable: row triggers (see revision 0008).
        op.execute(_ROW_MARKER)
        op.execute(
            "create trigger completions_histogram after insert or update or delete "
            "on completions for each row execute function completion_histogram_mark()"
        )
    else:
        op.execute(_STATEMENT_MARKER)
        for event, referencing in (
            ("insert", "new table as new_rows"),
            ("delete", "old table as old_rows"),
            ("update", "old table as old_rows new table as new_rows"),
        ):
            op.execute(
                f"create trigger completions_histogram_on_{event} after {event} on completions "
                f"referencing {referencing} for each statement "
                "execute function completion_histogram_mark()"
            )
    op.execute(
        "create trigger completions_histogram_on_truncate after truncate on completions "
        "for each statement execute function completion_histogram_truncate()"
    )
    op.execute(
        "create constraint trigger completion_histogram_flush after insert on "
        "completion_histogram_flushes deferrable initially deferred for each row "
        "execute function completion_histogram_flush()"
    )
    op.execute("revoke execute on function rebuild_completion_duration_histogram() from public")
    op.execute("select rebuild_completion_duration_histogram()")  # rows folded before this revision
    for name, column in (("cycle", "cycle_time_s"), ("lead", "lead_time_s")):
        op.execute(
            f"create index completions_{name}_bucket_idx on completions "
            f"(flow_duration_bucket({column}), completed_at) include ({column}, team)"
        )


def downgrade() -> None:
    op.execute("drop index if exists completions_lead_bucket_idx")
    op.execute("drop index if exists completions_cycle_bucket_idx")
    op.execute("drop trigger if exists completions_histogram on completions")
    for event in ("insert", "delete", "update", "truncate"):
        op.execute(f"drop trigger if exists completions_histogram_on_{event} on completions")
    op.execute("drop table if exists completion_histogram_flushes")
    op.execute("drop table if exists completion_histogram_pending")
    op.execute("drop table if exists completion_duration_histogram")
    for function in (
        "completion_histogram_mark()",
        "completion_histogram_flush()",
        "completion_histogram_truncate()",
        "rebuild_completion_duration_histogram()",
        "flow_duration_bucket(double precision)",
    ):
        op.execute(f"drop function if exists {function}")
