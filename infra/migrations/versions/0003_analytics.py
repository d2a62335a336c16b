"""Analytics: CFD arrivals, the ``analytics`` schema of stable SQL views, the read-only role.

Revision ID: 0003_analytics
Revises: 0002_dora

Four independent parts (``docs/analytics.md`` is the user-facing contract):

1. **Stage arrivals** (``stage_arrivals``, ``daily_cfd_arrivals``, ``stage_catalog``):
   the first time each item reached each stage *or a later one*, and those
   arrivals counted per UTC day. They are kept in step with ``stage_intervals``
   by triggers, so the fold needs no change: each statement on
   ``stage_intervals`` queues the item ids it touched; a deferred trigger
   recomputes those items once, at commit, and applies only the *net* change to
   the daily counters, upserting counter rows in key order so concurrent
   processors cannot deadlock on them. A 90-day CFD then reads a few thousand
   counter rows instead of every interval ever written (the same on plain
   PostgreSQL and TimescaleDB; a continuous aggregate cannot express "first
   arrival at or past a stage", which needs a window over each item's history).
2. **The analytics schema**: views with explicit column lists over the core
   tables, plus ``analytics.cfd(...)``. Views run with their owner's rights, so
   the reader needs nothing outside the schema.
3. **DORA views**, only where revision 0002's tables exist (see :func:`dora_view_sql`).
4. **The ``flowmetrics_reader`` role**: cluster-wide, created once whatever the
   number of databases; granted per database.
"""

from __future__ import annotations

from collections.abc import Mapping

from alembic import op
from sqlalchemy import text

revision = "0003_analytics"
down_revision = "0002_dora"
branch_labels = None
depends_on = None

READER_ROLE = "flowmetrics_reader"
DORA_TABLES = ("deployments", "production_deployments", "deployment_changes", "incidents")


def upgrade() -> None:
    _stage_arrivals()
    _analytics_views()
    for statement in dora_view_sql(_columns_of(DORA_TABLES)):
        op.execute(statement)
    _reader_role()


def downgrade() -> None:
    op.execute("drop schema if exists analytics cascade")
    for trigger in ("insert", "delete", "update", "truncate"):
        op.execute(f"drop trigger if exists stage_arrivals_on_{trigger} on stage_intervals")
    for table in ("stage_arrivals_pending", "daily_cfd_arrivals", "cfd_arrival_totals",
                  "stage_arrivals",
                  "stage_catalog"):
        op.execute(f"drop table if exists {table} cascade")
    for function in (
        "stage_arrivals_mark()",
        "stage_arrivals_flush()",
        "stage_arrivals_truncate()",
        "refresh_stage_arrivals(text[])",
        "rebuild_stage_arrivals()",
        "stage_arrivals_from(stage_intervals[])",
        "cfd_counts(date, date, text, text, text)",
    ):
        op.execute(f"drop function if exists {function}")
    # The role is cluster-wide and other databases may use it: only this
    # database's grant goes.
    op.execute(
        f"""
        do $$ begin
          if exists (select 1 from pg_roles where rolname = '{READER_ROLE}') then
            execute 'revoke connect on database ' || quote_ident(current_database())
                    || ' from {READER_ROLE}';
          end if;
        end $$
        """
    )


# -- 1. stage arrivals ----------------------------------------------------------------


def _stage_arrivals() -> None:
    op.execute(
        """
        create table stage_arrivals (
            item_id     text not null,
            stage_index int not null,
            arrived_at  timestamptz not null,
            team        text not null,
            project     text not null,
            item_type   text not null,
            primary key (item_id, stage_index)
        )
        """
    )
    op.execute(
        """
        create table daily_cfd_arrivals (
            day         date not null,
            team        text not null,
            project     text not null,
            item_type   text not null,
            stage_index int not null,
            arrivals    bigint not null,
            primary key (day, team, project, item_type, stage_index)
        )
        """
    )
    # All-time totals per key: a window's starting counts are these minus the
    # window's days and later, so no query sums the whole history.
    op.execute(
        """
        create table cfd_arrival_totals (
            team        text not null,
            project     text not null,
            item_type   text not null,
            stage_index int not null,
            arrivals    bigint not null,
            primary key (team, project, item_type, stage_index)
        )
        """
    )
    # Stage names as last written by the fold, so SQL users see names, not indices.
    op.execute("create table stage_catalog (stage_index int primary key, stage text not null)")
    # Item ids touched by the current transaction; emptied before every commit.
    op.execute(
        "create unlogged table stage_arrivals_pending "
        "(id bigint generated always as identity primary key, item_ids text[] not null)"
    )

    # From some items' stays: one row per item and stage index k from 0 up to the
    # furthest stage reached, arrived_at = the first entry into k or any later
    # stage. Seq order is time order, so "first" is the first stay whose index
    # beats every earlier one. Items whose latest stay is Removed (index -1) have
    # no arrivals.
    op.execute(
        """
        create function stage_arrivals_from(stays stage_intervals[]) returns setof stage_arrivals
        language sql immutable as $$
          select s.item_id, k, s.entered_at, s.team, s.project, s.item_type
          from (
            select i.*,
                   coalesce(max(i.stage_index) over (partition by i.item_id order by i.seq
                            rows between unbounded preceding and 1 preceding), -1) as reached,
                   first_value(i.flow_state) over (partition by i.item_id order by i.seq desc)
                     as final_state
            from unnest(stays) i
          ) s
          cross join lateral generate_series(s.reached + 1, s.stage_index) as k
          where s.stage_index > s.reached and s.final_state <> 'removed'
        $$
        """
    )
    # Each item's rows are read once (joins on unnest(ids) plan as index merge
    # joins), diffed in memory, and only real changes are written. jit off: the
    # planner's guesses for these arrays are far too high and JIT compilation
    # would cost more than the work.
    op.execute(
        """
        create function refresh_stage_arrivals(ids text[]) returns void
        language plpgsql set jit = off as $$
        declare
          stays stage_intervals[];
          old stage_arrivals[];
          fresh stage_arrivals[];
          gone stage_arrivals[];
          born stage_arrivals[];
          delta daily_cfd_arrivals[];
        begin
          if ids is null or cardinality(ids) = 0 then
            return;
          end if;
          select coalesce(array_agg(i), '{}') into stays
          from unnest(ids) as u(item_id) join stage_intervals i on i.item_id = u.item_id;
          select coalesce(array_agg(a), '{}') into old
          from unnest(ids) as u(item_id) join stage_arrivals a on a.item_id = u.item_id;
          select coalesce(array_agg(a), '{}') into fresh from stage_arrivals_from(stays) a;
          select coalesce(array_agg(g), '{}') into gone
          from (select * from unnest(old) except all select * from unnest(fresh)) g;
          select coalesce(array_agg(n), '{}') into born
          from (select * from unnest(fresh) except all select * from unnest(old)) n;

          if cardinality(gone) > 0 or cardinality(born) > 0 then
            select coalesce(array_agg(x), '{}') into delta
            from (
              select (d.arrived_at at time zone 'UTC')::date as day, d.team, d.project,
                     d.item_type, d.stage_index, sum(d.delta)::bigint as arrivals
              from (select n.*, 1 as delta from unnest(born) n
                    union all
                    select g.*, -1 from unnest(gone) g) d
              group by 1, 2, 3, 4, 5
              having sum(d.delta) <> 0
            ) x;

            -- Counter rows are upserted in key order, days before totals, so
            -- concurrent processors always lock in the same order (no deadlock).
            insert into daily_cfd_arrivals as c
            select * from unnest(delta) u
            order by u.day, u.team, u.project, u.item_type, u.stage_index
            on conflict (day, team, project, item_type, stage_index)
            do update set arrivals = c.arrivals + excluded.arrivals;

            insert into cfd_arrival_totals as t
            select u.team, u.project, u.item_type, u.stage_index, sum(u.arrivals)
            from unnest(delta) u
            group by 1, 2, 3, 4
            order by 1, 2, 3, 4
            on conflict (team, project, item_type, stage_index)
            do update set arrivals = t.arrivals + excluded.arrivals;

            -- A changed arrival is in both: its old row goes, its new row comes.
            delete from stage_arrivals a
            using unnest(gone) g
            where a.item_id = g.item_id and a.stage_index = g.stage_index;
            insert into stage_arrivals select * from unnest(born);
          end if;

          -- Only when a name is new or changed, so the common case takes no lock.
          insert into stage_catalog (stage_index, stage)
          select distinct on (i.stage_index) i.stage_index, i.stage
          from unnest(stays) i
          where i.stage_index >= 0
            and not exists (select 1 from stage_catalog c
                            where c.stage_index = i.stage_index and c.stage = i.stage)
          order by i.stage_index
          on conflict (stage_index) do update set stage = excluded.stage;
        end $$
        """
    )
    op.execute(
        """
        create function stage_arrivals_mark() returns trigger language plpgsql as $$
        begin
          if tg_op = 'INSERT' then
            insert into stage_arrivals_pending (item_ids)
            select array_agg(distinct item_id) from new_rows having count(*) > 0;
          elsif tg_op = 'DELETE' then
            insert into stage_arrivals_pending (item_ids)
            select array_agg(distinct item_id) from old_rows having count(*) > 0;
          else
            insert into stage_arrivals_pending (item_ids)
            select array_agg(distinct item_id)
            from (select item_id from old_rows union select item_id from new_rows) t
            having count(*) > 0;
          end if;
          return null;
        end $$
        """
    )
    op.execute(
        """
        create function stage_arrivals_flush() returns trigger language plpgsql as $$
        declare
          ids text[];
        begin
          -- The first deferred call of a transaction takes every pending row and
          -- refreshes all their items at once; the later calls find theirs gone.
          if not exists (select 1 from stage_arrivals_pending where id = new.id) then
            return null;
          end if;
          with taken as (delete from stage_arrivals_pending returning item_ids)
          select array_agg(distinct t.item_id) into ids
          from taken, unnest(taken.item_ids) as t(item_id);
          perform refresh_stage_arrivals(ids);
          return null;
        end $$
        """
    )
    op.execute(
        """
        create function stage_arrivals_truncate() returns trigger language plpgsql as $$
        begin
          truncate stage_arrivals, daily_cfd_arrivals, cfd_arrival_totals;
          return null;
        end $$
        """
    )
    op.execute(
        """
        create function rebuild_stage_arrivals() returns void language plpgsql as $$
        declare
          chunk text[];
        begin
          truncate stage_arrivals, daily_cfd_arrivals, cfd_arrival_totals;
          for chunk in
            select array_agg(d.item_id)
            from (select item_id, (row_number() over (order by item_id) - 1) / 5000 as part
                  from (select distinct item_id from stage_intervals) ids) d
            group by d.part
          loop
            perform refresh_stage_arrivals(chunk);
          end loop;
        end $$
        """
    )
    for event, referencing in (
        ("insert", "new table as new_rows"),
        ("delete", "old table as old_rows"),
        ("update", "old table as old_rows new table as new_rows"),
    ):
        op.execute(
            f"create trigger stage_arrivals_on_{event} after {event} on stage_intervals "
            f"referencing {referencing} for each statement execute function stage_arrivals_mark()"
        )
    op.execute(
        "create trigger stage_arrivals_on_truncate after truncate on stage_intervals "
        "for each statement execute function stage_arrivals_truncate()"
    )
    op.execute(
        "create constraint trigger stage_arrivals_flush after insert on stage_arrivals_pending "
        "deferrable initially deferred for each row execute function stage_arrivals_flush()"
    )
    for function in ("refresh_stage_arrivals(text[])", "rebuild_stage_arrivals()",
                     "stage_arrivals_from(stage_intervals[])"):
        op.execute(f"revoke execute on function {function} from public")
    op.execute("select rebuild_stage_arrivals()")  # rows folded before this revision


# -- 2. the analytics schema ----------------------------------------------------------

ANALYTICS_VIEWS: dict[str, str] = {
    "work_items": """
        select w.item_id, w.display_key, w.source, w.title, w.item_type, w.project, w.team,
               w.status, w.stage, w.flow_state, w.created_at, w.started_at, w.completed_at,
               w.assignee, w.labels, w.url, w.updated_at,
               case when w.flow_state = 'wip'
                    then extract(epoch from now() - w.started_at) / 3600.0 end as age_hours
        from public.work_items w
    """,
    "transitions": """
        select t.item_id, t.event_id, t.occurred_at, t.from_status, t.to_status,
               t.from_stage, t.to_stage, t.team, t.project, t.item_type
        from public.transitions t
    """,
    "completions": """
        select c.item_id, w.display_key, c.completed_at, c.started_at, c.created_at,
               c.team, c.project, c.item_type, c.cycle_time_s,
               c.cycle_time_s / 3600.0 as cycle_time_hours,
               c.lead_time_s, c.lead_time_s / 3600.0 as lead_time_hours
        from public.completions c
        left join public.work_items w on w.item_id = c.item_id
    """,
    "stage_intervals": """
        select i.item_id, i.seq, i.stage, i.stage_index, i.flow_state, i.entered_at,
               i.exited_at, extract(epoch from i.exited_at - i.entered_at) / 3600.0 as hours,
               i.team, i.project, i.item_type
        from public.stage_intervals i
    """,
    "daily_throughput": """
        select (d.day at time zone 'UTC')::date as day, d.team, d.project, d.item_type,
               d.items::bigint as items,
               d.cycle_time_s_sum / 3600.0 / nullif(d.items, 0) as mean_cycle_time_hours
        from public.daily_throughput d
    """,
    "stages": """
        select c.stage_index, c.stage from public.stage_catalog c
    """,
    "stage_arrivals": """
        select a.item_id, a.stage_index, c.stage, a.arrived_at, a.team, a.project,
               a.item_type
        from public.stage_arrivals a
        left join public.stage_catalog c on c.stage_index = a.stage_index
    """,
    "cfd_daily_arrivals": """
        select d.day, d.team, d.project, d.item_type, d.stage_index, c.stage, d.arrivals
        from public.daily_cfd_arrivals d
        left join public.stage_catalog c on c.stage_index = d.stage_index
        where d.arrivals <> 0
    """,
    # Same definitions as GET /api/v1/flow/aging-wip, as of now, 90-day reference.
    "aging_wip": """
        with ref as (
          select c.team, count(*) as reference_items,
                 percentile_cont(0.5) within group (order by c.cycle_time_s) / 3600.0 as p50,
                 percentile_cont(0.85) within group (order by c.cycle_time_s) / 3600.0 as p85,
                 percentile_cont(0.95) within group (order by c.cycle_time_s) / 3600.0 as p95
          from public.completions c
          where c.completed_at >= now() - interval '90 days' and c.completed_at < now()
          group by c.team
        ), wip as (
          select w.*, extract(epoch from now() - w.started_at) / 3600.0 as age
          from public.work_items w
          where w.flow_state = 'wip'
        )
        select wip.item_id, wip.display_key, wip.title, wip.team, wip.project,
               wip.item_type, wip.stage, wip.started_at, wip.age as age_hours,
               coalesce(ref.reference_items, 0) as reference_items,
               ref.p50 as p50_hours, ref.p85 as p85_hours, ref.p95 as p95_hours,
               case when ref.team is null then null
                    when wip.age > ref.p95 then 'breached'
                    when wip.age > ref.p85 then 'at_risk'
                    else 'on_track' end as flag
        from wip left join ref on ref.team = wip.team
    """,
}

# Per UTC day in [from_day, to_day) and stage index: how many items had arrived
# in that stage or a later one by the end of the day. A single plain SELECT, so
# PostgreSQL inlines it into the caller's query and plans it with the actual
# filter values (the API calls it; it reads only ``public`` tables, which is
# what the API's role may read). SQL users call the ``analytics.cfd`` wrapper.
CFD_COUNTS_FUNCTION = """
    create function cfd_counts(from_day date, to_day date, team text default null,
                               project text default null, item_type text default null)
    returns table (day date, stage_index int, stage text, items bigint)
    language sql stable as $$
      with later as (
        select d.day, d.stage_index, sum(d.arrivals) as n
        from public.daily_cfd_arrivals d
        where d.day >= cfd_counts.from_day
          and (cfd_counts.team is null or d.team = cfd_counts.team)
          and (cfd_counts.project is null or d.project = cfd_counts.project)
          and (cfd_counts.item_type is null or d.item_type = cfd_counts.item_type)
        group by d.day, d.stage_index
      ), base as (
        select t.stage_index,
               sum(t.arrivals) - coalesce((select sum(l.n) from later l
                                           where l.stage_index = t.stage_index), 0) as n
        from public.cfd_arrival_totals t
        where (cfd_counts.team is null or t.team = cfd_counts.team)
          and (cfd_counts.project is null or t.project = cfd_counts.project)
          and (cfd_counts.item_type is null or t.item_type = cfd_counts.item_type)
        group by t.stage_index
      ), grid as (
        select cfd_counts.from_day + g.n as day, b.stage_index, b.n as base
        from generate_series(0, cfd_counts.to_day - cfd_counts.from_day - 1) as g(n)
        cross join base b
      )
      select g.day, g.stage_index, coalesce(st.stage, 'stage ' || g.stage_index),
             (g.base + sum(coalesce(l.n, 0)) over (
                 partition by g.stage_index order by g.day))::bigint
      from grid g
      left join later l on l.day = g.day and l.stage_index = g.stage_index
      left join public.stage_catalog st on st.stage_index = g.stage_index
      order by g.day, g.stage_index
    $$
"""

# The same for SQL users: runs as its owner, so the read-only role needs no
# access to the counter tables (search_path pinned, as a definer function must).
CFD_FUNCTION = """
    create function analytics.cfd(from_day date, to_day date, team text default null,
                                  project text default null, item_type text default null)
    returns table (day date, stage_index int, stage text, items bigint)
    language sql stable security definer
    set search_path = pg_catalog, public
    set jit = off
    as $$
      select * from public.cfd_counts(from_day, to_day, team, project, item_type)
    $$
"""


def _analytics_views() -> None:
    op.execute("create schema analytics")
    for name, body in ANALYTICS_VIEWS.items():
        op.execute(f"create view analytics.{name} as {body}")
    op.execute(CFD_COUNTS_FUNCTION)
    op.execute(CFD_FUNCTION)
    op.execute("revoke execute on all functions in schema analytics from public")


# -- 3. DORA views (only over the tables revision 0002 created) -------------------------


def _columns_of(tables: tuple[str, ...]) -> dict[str, set[str]]:
    rows = op.get_bind().execute(
        text(
            "select table_name, column_name from information_schema.columns "
            "where table_schema = 'public' and table_name = any(:tables)"
        ),
        {"tables": list(tables)},
    )
    found: dict[str, set[str]] = {}
    for table, column in rows:
        found.setdefault(str(table), set()).add(str(column))
    return found


# view name -> (the columns of 0002's tables it reads, its body)
DORA_VIEWS: dict[str, tuple[dict[str, set[str]], str]] = {
    "deployments": (
        {"deployments": {
            "deployment_id", "service", "repo", "team", "environment", "is_production",
            "sha", "status", "succeeded", "failed", "failure_reason", "started_at",
            "finished_at", "url", "rollback_of", "rolled_back_by"}},
        """
        select d.deployment_id, d.service, d.repo, d.team, d.environment, d.is_production,
               d.sha, d.status, d.succeeded, d.failed, d.failure_reason, d.started_at,
               d.finished_at, d.url, d.rollback_of, d.rolled_back_by
        from public.deployments d
        """,
    ),
    "deployment_changes": (
        {"deployment_changes": {
            "service", "repo", "team", "sha", "deployment_id", "deployed_at", "committed_at",
            "lead_time_s", "pull_request", "kind"}},
        """
        select c.service, c.repo, c.team, c.sha, c.deployment_id, c.deployed_at,
               c.committed_at, c.lead_time_s, c.lead_time_s / 3600.0 as lead_time_hours,
               c.pull_request, c.kind
        from public.deployment_changes c
        """,
    ),
    "incidents": (
        {"incidents": {
            "incident_id", "service", "repo", "team", "title", "opened_at", "resolved_at",
            "time_to_restore_s", "deployment_id", "attribution"}},
        """
        select i.incident_id, i.service, i.repo, i.team, i.title, i.opened_at, i.resolved_at,
               i.time_to_restore_s, i.time_to_restore_s / 3600.0 as time_to_restore_hours,
               i.deployment_id, i.attribution
        from public.incidents i
        """,
    ),
    # The four keys per ISO week (Monday, UTC) and team.
    "dora_weekly": (
        {
            "production_deployments": {"finished_at", "team", "succeeded", "failed"},
            "deployment_changes": {"deployed_at", "team", "lead_time_s"},
            "incidents": {"opened_at", "team", "time_to_restore_s"},
        },
        """
        with deploys as (
          select date_trunc('week', p.finished_at at time zone 'UTC')::date as week, p.team,
                 count(*) filter (where p.succeeded) as deployments,
                 count(*) as finished,
                 count(*) filter (where p.failed) as failed
          from public.production_deployments p group by 1, 2
        ), leads as (
          select date_trunc('week', c.deployed_at at time zone 'UTC')::date as week, c.team,
                 percentile_cont(0.5) within group (order by c.lead_time_s) / 3600.0 as p50,
                 percentile_cont(0.85) within group (order by c.lead_time_s) / 3600.0 as p85
          from public.deployment_changes c where c.lead_time_s is not null group by 1, 2
        ), restores as (
          select date_trunc('week', i.opened_at at time zone 'UTC')::date as week, i.team,
                 count(*) as incidents,
                 percentile_cont(0.5) within group (order by i.time_to_restore_s) / 3600.0
                   as p50,
                 percentile_cont(0.85) within group (order by i.time_to_restore_s) / 3600.0
                   as p85
          from public.incidents i group by 1, 2
        ), keys as (
          select week, team from deploys union select week, team from leads
          union select week, team from restores
        )
        select k.week, k.team,
               coalesce(d.deployments, 0) as deployments,
               coalesce(d.finished, 0) as finished_deployments,
               coalesce(d.failed, 0) as failed_deployments,
               d.failed::double precision / nullif(d.finished, 0) as change_failure_rate,
               l.p50 as lead_time_p50_hours, l.p85 as lead_time_p85_hours,
               coalesce(r.incidents, 0) as incidents,
               r.p50 as time_to_restore_p50_hours, r.p85 as time_to_restore_p85_hours
        from keys k
        left join deploys d on d.week = k.week and d.team = k.team
        left join leads l on l.week = k.week and l.team = k.team
        left join restores r on r.week = k.week and r.team = k.team
        """,
    ),
}


def dora_view_sql(columns: Mapping[str, set[str]]) -> list[str]:
    """``create view`` statements for the DORA views the existing tables allow.

    ``columns`` maps each existing table to its columns. A view whose tables or
    columns are missing is left out, so this revision also runs where revision
    0002's tables are absent or older.
    """
    return [
        f"create view analytics.{name} as {body}"
        for name, (needs, body) in DORA_VIEWS.items()
        if all(wanted <= columns.get(table, set()) for table, wanted in needs.items())
    ]


# -- 4. the read-only role ------------------------------------------------------------


def _reader_role() -> None:
    op.execute(
        f"""
        do $$
        begin
          begin
            create role {READER_ROLE} login;
            alter role {READER_ROLE} set default_transaction_read_only = on;
            alter role {READER_ROLE} set statement_timeout = '60s';
          exception
            -- Roles are cluster-wide: another database (or a concurrent
            -- migration) made it first.
            when duplicate_object or unique_violation then null;
            when insufficient_privilege then
              raise warning 'cannot create role {READER_ROLE}: create it, then re-grant '
                            '(docs/analytics.md)';
          end;
          if exists (select 1 from pg_roles where rolname = '{READER_ROLE}') then
            execute 'grant connect on database ' || quote_ident(current_database())
                    || ' to {READER_ROLE}';
            grant usage on schema analytics to {READER_ROLE};
            grant select on all tables in schema analytics to {READER_ROLE};
            grant execute on all functions in schema analytics to {READER_ROLE};
            alter default privileges in schema analytics
              grant select on tables to {READER_ROLE};
            alter default privileges in schema analytics
              grant execute on functions to {READER_ROLE};
          end if;
        end $$
        """
    )
