"""Daily flow counters for the API's time series, and indexes for its range reads.

Revision ID: 0008_daily_flow_counts
Revises: 0007_deferred_projections

``daily_flow_counts`` holds, per UTC day and (team, project, item_type):

- ``wip_net``: WIP stays entered minus WIP stays left, each change counted on
  the day at whose *end* (the next UTC midnight) it is first seen: a change at
  ``t`` is on ``((t - 1 µs) at time zone 'UTC')::date``. WIP at a midnight ``M``
  (``entered_at <= M < exited_at``) is then the sum of every day before ``M``'s
  date, whatever the history's length, and a 90-day WIP series reads a few
  thousand counter rows instead of every stay that overlaps the window;
- ``completed``: completions by the UTC day of ``completed_at`` (throughput).

They are kept in step with ``stage_intervals`` and ``completions`` the way
revision 0003 keeps the CFD arrivals: each statement adds its net change to an
unlogged pending table (plain inserts, so concurrent processors never wait on
each other), and a deferred trigger folds the transaction's pending rows into
the counters at commit, upserting in key order. Counters are linear in the rows,
so a change is exactly the new rows minus the old ones; nothing is recomputed.

``stage_intervals`` is a plain table on both paths and uses statement triggers
with transition tables (as 0003 does). ``completions`` is a hypertable under
TimescaleDB, where transition tables are not available on every supported
version, so it uses row triggers; items complete once, so these rows are few.
(The ``daily_throughput`` continuous aggregate is not used for this: on plain
PostgreSQL it is a view over ``completions``, no cheaper than the table.)

Indexes: ``completions (completed_at)`` and ``(team, completed_at)``, both
covering the columns ``/api/v1/metrics`` reads, so its percentiles come from an
index-only range scan with or without a team filter (the existing
``(team, completed_at)`` index needs a heap visit per completion).
"""

from __future__ import annotations

from collections.abc import Callable

from alembic import op

from infra.migrations.timescale import ensure_timescaledb

revision = "0008_daily_flow_counts"
down_revision = "0007_deferred_projections"
branch_labels = None
depends_on = None

# The day at whose end a WIP change at `t` is first seen, and a completion's day.
WIP_DAY = "(({t} - interval '1 microsecond') at time zone 'UTC')::date"
COMPLETED_DAY = "({t} at time zone 'UTC')::date"


def _stay_changes(rows: str, sign: int) -> str:
    """Counter changes of some ``stage_intervals`` rows, times ``sign``."""
    return f"""
        select {WIP_DAY.format(t="r.entered_at")} as day, r.team, r.project, r.item_type,
               {sign} as wip_net, 0 as completed
        from {rows} r where r.flow_state = 'wip'
        union all
        select {WIP_DAY.format(t="r.exited_at")}, r.team, r.project, r.item_type, {-sign}, 0
        from {rows} r where r.flow_state = 'wip' and r.exited_at is not null
    """


def _completion_changes(rows: str, sign: int) -> str:
    """Counter changes of some ``completions`` rows, times ``sign``."""
    return f"""
        select {COMPLETED_DAY.format(t="r.completed_at")} as day, r.team, r.project,
               r.item_type, 0 as wip_net, {sign} as completed
        from {rows} r
    """


def _pending_from(changes: str) -> str:
    return f"""
        insert into daily_flow_pending (day, team, project, item_type, wip_net, completed)
        select c.day, c.team, c.project, c.item_type, sum(c.wip_net), sum(c.completed)
        from ({changes}) c
        group by 1, 2, 3, 4
        having sum(c.wip_net) <> 0 or sum(c.completed) <> 0;
    """


def _statement_marker(name: str, changes: Callable[[str, int], str]) -> str:
    """A statement trigger function adding the net change of a statement's rows."""
    both = changes("new_rows", 1) + " union all " + changes("old_rows", -1)
    return f"""
        create function {name}() returns trigger language plpgsql as $$
        begin
          if tg_op = 'INSERT' then
            {_pending_from(changes("new_rows", 1))}
          elsif tg_op = 'DELETE' then
            {_pending_from(changes("old_rows", -1))}
          else
            {_pending_from(both)}
          end if;
          return null;
        end $$
    """


def _statement_triggers(prefix: str, table: str, function: str) -> None:
    for event, referencing in (
        ("insert", "new table as new_rows"),
        ("delete", "old table as old_rows"),
        ("update", "old table as old_rows new table as new_rows"),
    ):
        op.execute(
            f"create trigger {prefix}_on_{event} after {event} on {table} "
            f"referencing {referencing} for each statement execute function {function}()"
        )


_ROW_MARKER = f"""
    create function daily_flow_mark_completion() returns trigger language plpgsql as $$
    begin
      if tg_op in ('UPDATE', 'DELETE') then
        insert into daily_flow_pending (day, team, project, item_type, wip_net, completed)
        values ({COMPLETED_DAY.format(t="old.completed_at")}, old.team, old.project,
                old.item_type, 0, -1);
      end if;
      if tg_op in ('UPDATE', 'INSERT') then
        insert into daily_flow_pending (day, team, project, item_type, wip_net, completed)
        values ({COMPLETED_DAY.format(t="new.completed_at")}, new.team, new.project,
                new.item_type, 0, 1);
      end if;
      return null;
    end $$
"""


def upgrade() -> None:
    op.execute(
        """
        create table daily_flow_counts (
            day       date not null,
            team      text not null,
            project   text not null,
            item_type text not null,
            wip_net   bigint not null default 0,
            completed bigint not null default 0,
            primary key (day, team, project, item_type)
        )
        """
    )
    op.execute(
        """
        create unlogged table daily_flow_pending (
            id        bigint generated always as identity primary key,
            day       date not null,
            team      text not null,
            project   text not null,
            item_type text not null,
            wip_net   bigint not null,
            completed bigint not null
        )
        """
    )
    # The first deferred call of a transaction folds every pending row; the later
    # calls find theirs gone. Key order keeps concurrent committers deadlock-free.
    op.execute(
        """
        create function daily_flow_flush() returns trigger language plpgsql as $$
        begin
          if not exists (select 1 from daily_flow_pending where id = new.id) then
            return null;
          end if;
          with taken as (delete from daily_flow_pending returning *)
          insert into daily_flow_counts as c (day, team, project, item_type, wip_net, completed)
          select t.day, t.team, t.project, t.item_type, sum(t.wip_net), sum(t.completed)
          from taken t
          group by 1, 2, 3, 4
          having sum(t.wip_net) <> 0 or sum(t.completed) <> 0
          order by 1, 2, 3, 4
          on conflict (day, team, project, item_type) do update
            set wip_net = c.wip_net + excluded.wip_net,
                completed = c.completed + excluded.completed;
          return null;
        end $$
        """
    )
    for column, table in (("wip_net", "stays"), ("completed", "completions")):
        op.execute(
            f"""
            create function daily_flow_truncate_{table}() returns trigger
            language plpgsql as $$
            begin
              update daily_flow_pending set {column} = 0 where {column} <> 0;
              update daily_flow_counts set {column} = 0 where {column} <> 0;
              return null;
            end $$
            """
        )
    op.execute(
        f"""
        create function rebuild_daily_flow_counts() returns void language plpgsql as $$
        begin
          delete from daily_flow_pending;
          truncate daily_flow_counts;
          insert into daily_flow_counts (day, team, project, item_type, wip_net, completed)
          select c.day, c.team, c.project, c.item_type, sum(c.wip_net), sum(c.completed)
          from ({_stay_changes("stage_intervals", 1)}
                union all {_completion_changes("completions", 1)}) c
          group by 1, 2, 3, 4
          having sum(c.wip_net) <> 0 or sum(c.completed) <> 0;
        end $$
        """
    )

    # Named after 0003's stage_arrivals_* triggers so that they fire after them
    # (same-event triggers fire in name order): a transaction then queues the CFD
    # flush before this one, and both take their counter locks in one order.
    op.execute(_statement_marker("daily_flow_mark_stays", _stay_changes))
    _statement_triggers("stage_flow_counts", "stage_intervals", "daily_flow_mark_stays")
    op.execute(
        "create trigger stage_flow_counts_on_truncate after truncate on stage_intervals "
        "for each statement execute function daily_flow_truncate_stays()"
    )
    if ensure_timescaledb():
        # A hypertable: row triggers (see the module docstring).
        op.execute(_ROW_MARKER)
        op.execute(
            "create trigger completions_flow_counts after insert or update or delete "
            "on completions for each row execute function daily_flow_mark_completion()"
        )
    else:
        op.execute(_statement_marker("daily_flow_mark_completion", _completion_changes))
        _statement_triggers("completions_flow_counts", "completions", "daily_flow_mark_completion")
    op.execute(
        "create trigger completions_flow_counts_on_truncate after truncate on completions "
        "for each statement execute function daily_flow_truncate_completions()"
    )
    op.execute(
        "create constraint trigger daily_flow_flush after insert on daily_flow_pending "
        "deferrable initially deferred for each row execute function daily_flow_flush()"
    )
    op.execute("revoke execute on function rebuild_daily_flow_counts() from public")
    op.execute("select rebuild_daily_flow_counts()")  # rows folded before this revision

    op.execute(
        "create index completions_time_idx on completions (completed_at) "
        "include (cycle_time_s, lead_time_s, team, project, item_type)"
    )
    op.execute(
        "create index completions_team_time_idx on completions (team, completed_at) "
        "include (cycle_time_s, lead_time_s, project, item_type)"
    )


def downgrade() -> None:
    op.execute("drop index if exists completions_team_time_idx")
    op.execute("drop index if exists completions_time_idx")
    op.execute("drop trigger if exists completions_flow_counts on completions")
    for event in ("insert", "delete", "update", "truncate"):
        op.execute(f"drop trigger if exists completions_flow_counts_on_{event} on completions")
        op.execute(f"drop trigger if exists stage_flow_counts_on_{event} on stage_intervals")
    op.execute("drop table if exists daily_flow_pending")
    op.execute("drop table if exists daily_flow_counts")
    for function in (
        "daily_flow_mark_stays()",
        "daily_flow_mark_completion()",
        "daily_flow_flush()",
        "daily_flow_truncate_stays()",
        "daily_flow_truncate_completions()",
        "rebuild_daily_flow_counts()",
    ):
        op.execute(f"drop function if exists {function}")
