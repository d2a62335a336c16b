"""The API benchmark's data set: millions of transitions, bulk-loaded in minutes.

Rows are what the processor itself would write: each item's history is planned
by the generator (:func:`bench.generator.plan_statuses`), built as canonical
events without validation (``model_construct``) and folded by the pure
:func:`processor.work_items.fold_work_item`; the derived rows go straight into
``work_items``, ``transitions``, ``stage_intervals`` and ``completions`` through
four concurrent COPY streams. Secondary indexes and primary keys are dropped
for the load and rebuilt after it (a sorted build beats millions of inserts).

Items are created uniformly over ``days`` ending at ``end``; those still in
flight at ``end`` are cut there, so the last weeks hold real WIP.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from bench.generator import ITEM_TYPES, TEAMS, GeneratorConfig, plan_statuses
from processor.stages import StageConfig
from processor.work_items import (
    CompletionRow,
    StageIntervalRow,
    TransitionRow,
    WorkItemProjection,
    WorkItemRow,
    fold_work_item,
)
from schemas.events import WorkItemTransitioned, WorkItemUpserted

END = datetime(2026, 1, 1, tzinfo=UTC)
# The derived tables and the row type of each (as processor.work_item_store writes them).
_TABLES: tuple[tuple[str, type[Any]], ...] = (
    ("work_items", WorkItemRow),
    ("transitions", TransitionRow),
    ("stage_intervals", StageIntervalRow),
    ("completions", CompletionRow),
)


def projections(
    transitions: int, stages: StageConfig, *, seed: int = 7, days: int = 730, end: datetime = END
) -> Iterator[WorkItemProjection]:
    """Folded items until their transitions add up to ``transitions``."""
    rng = random.Random(seed)
    config = GeneratorConfig(seed=seed)
    types, weights = [t for t, _ in ITEM_TYPES], [w for _, w in ITEM_TYPES]
    span = days * 86_400.0
    made, n = 0, 0
    while made < transitions:
        n += 1
        team, project = TEAMS[rng.randrange(len(TEAMS))]
        item_id = f"jira:{n}"
        created = end - timedelta(seconds=rng.uniform(0, span))
        common: dict[str, Any] = {
            "source": "jira",
            "key": item_id,
            "item_id": item_id,
            "received_at": created,
            "schema_version": 1,
        }
        first = rng.choice(("To Do", "Backlog"))
        events: list[Any] = [
            WorkItemUpserted.model_construct(
                **common,
                type="work_item.upserted",
                event_id=f"u{n}",
                occurred_at=created,
                display_key=f"{project}-{n}",
                title=f"item {n}",
                item_type=rng.choices(types, weights)[0],
                project=project,
                team=team,
                status=first,
                status_category="new",
                assignee=None,
                labels=(),
                created_at=created,
                url=None,
            ),
            _move(common, f"c{n}", created, None, first, "new"),
        ]
        at, previous = created, first
        for i, (status, category, hours) in enumerate(plan_statuses(rng, config)):
            at += timedelta(hours=max(hours, 1 / 60))
            if at >= end:
                break
            events.append(_move(common, f"s{n}-{i}", at, previous, status, category))
            previous = status
        folded = fold_work_item(item_id, events, stages)
        made += len(folded.transitions)
        yield folded


def _move(
    common: dict[str, Any],
    event_id: str,
    at: datetime,
    before: str | None,
    status: str,
    category: str,
) -> WorkItemTransitioned:
    return WorkItemTransitioned.model_construct(
        **common,
        type="work_item.transitioned",
        event_id=event_id,
        occurred_at=at,
        from_status=before,
        to_status=status,
        to_status_category=category,
        to_stage=None,
        sequence=0,
    )


def load(dsn: str, transitions: int, stages: StageConfig, *, seed: int = 7) -> dict[str, Any]:
    """Bulk-load the data set into a migrated, empty database; returns counts and timings."""
    started = time.monotonic()
    tables = [table for table, _ in _TABLES]
    with psycopg.connect(dsn, autocommit=True) as admin:
        rebuild = _drop_indexes(admin, tables)
        # Revisions 0003, 0008 and 0009 keep the CFD arrivals, the daily flow
        # counters and the duration histogram in step with these tables by
        # triggers; for a bulk load, one set-based rebuild afterwards is far cheaper.
        # (Hypertables refuse to disable triggers: under TimescaleDB completions
        # keeps its triggers and the rebuild redoes it.)
        derived = _derived_counters(admin)
        paused = [t for t in ("stage_intervals", "completions") if _can_pause_triggers(admin, t)]
        if derived:
            for table in paused:
                admin.execute(f"alter table {table} disable trigger user")
    counts = dict.fromkeys(tables, 0)
    with ExitStack() as stack:
        copies = {}
        for table, kind in _TABLES:
            conn = stack.enter_context(psycopg.connect(dsn))
            columns = ", ".join(kind._fields)
            cur = stack.enter_context(conn.cursor())
            copies[table] = stack.enter_context(cur.copy(f"copy {table} ({columns}) from stdin"))
        report = max(transitions // 10, 1)
        next_report = report
        for p in projections(transitions, stages, seed=seed):
            if p.item is not None:
                copies["work_items"].write_row(_listed(p.item))
                counts["work_items"] += 1
            for t in p.transitions:
                copies["transitions"].write_row(t)
            for i in p.intervals:
                copies["stage_intervals"].write_row(i)
            if p.completion is not None:
                copies["completions"].write_row(p.completion)
                counts["completions"] += 1
            counts["transitions"] += len(p.transitions)
            counts["stage_intervals"] += len(p.intervals)
            if counts["transitions"] >= next_report:
                next_report += report
                print(
                    f"  api data: {counts['transitions']:,} transitions "
                    f"({time.monotonic() - started:.0f}s)",
                    file=sys.stderr,
                    flush=True,
                )
    copied = time.monotonic() - started
    histogram_s = None
    with psycopg.connect(dsn, autocommit=True) as admin:
        for statement in rebuild:
            admin.execute(statement)
        if derived:
            for table in paused:
                admin.execute(f"alter table {table} enable trigger user")
        if "rebuild_stage_arrivals" in derived:
            _rebuild_stage_arrivals(admin)
            tables += ["stage_arrivals", "daily_cfd_arrivals", "cfd_arrival_totals"]
        if "rebuild_daily_flow_counts" in derived:
            admin.execute("select rebuild_daily_flow_counts()")
            tables += ["daily_flow_counts"]
        if "rebuild_completion_duration_histogram" in derived:
            began = time.monotonic()
            admin.execute("select rebuild_completion_duration_histogram()")
            histogram_s = round(time.monotonic() - began, 1)
            tables += ["completion_duration_histogram"]
        for table in tables:
            admin.execute(f"vacuum analyze {table}")
    return {
        "rows": counts,
        "copy_s": round(copied, 1),
        "duration_histogram_s": histogram_s,
        "total_s": round(time.monotonic() - started, 1),
    }


def _derived_counters(conn: psycopg.Connection[Any]) -> set[str]:
    """The rebuild functions of the trigger-maintained tables this schema has."""
    rows = conn.execute(
        "select proname from pg_proc where proname = any(%s)",
        (
            [
                "rebuild_stage_arrivals",
                "rebuild_daily_flow_counts",
                "rebuild_completion_duration_histogram",
            ],
        ),
    ).fetchall()
    return {name for (name,) in rows}


def _can_pause_triggers(conn: psycopg.Connection[Any], table: str) -> bool:
    """False for a TimescaleDB hypertable (it refuses ``disable trigger``)."""
    try:
        found = conn.execute(
            "select 1 from timescaledb_information.hypertables where hypertable_name = %s",
            (table,),
        ).fetchone()
    except psycopg.errors.UndefinedTable:
        return True
    return found is None


def _rebuild_stage_arrivals(conn: psycopg.Connection[Any]) -> None:
    """What ``rebuild_stage_arrivals()`` (revision 0003) computes, in one set-based
    pass instead of per chunk of items (minutes instead of tens of minutes at 10 M
    transitions): per item and stage index k up to the furthest reached, the first
    entry into k or a later stage; none for items whose latest stay is Removed. The
    benchmark's raw CFD query checks the result."""
    conn.execute("set work_mem = '256MB'")
    conn.execute("truncate stage_arrivals, daily_cfd_arrivals, cfd_arrival_totals")
    conn.execute(
        """insert into stage_arrivals (item_id, stage_index, arrived_at, team, project, item_type)
           select s.item_id, k, s.entered_at, s.team, s.project, s.item_type
           from (
             select i.item_id, i.stage_index, i.entered_at, i.team, i.project, i.item_type,
                    coalesce(max(i.stage_index) over (w rows between unbounded preceding
                                                      and 1 preceding), -1) as reached,
                    last_value(i.flow_state) over (w rows between unbounded preceding
                                                   and unbounded following) as final_state
             from stage_intervals i
             window w as (partition by i.item_id order by i.seq)
           ) s
           cross join lateral generate_series(s.reached + 1, s.stage_index) as k
           where s.stage_index > s.reached and s.final_state <> 'removed'"""
    )
    conn.execute(
        """insert into daily_cfd_arrivals (day, team, project, item_type, stage_index, arrivals)
           select (arrived_at at time zone 'UTC')::date, team, project, item_type, stage_index,
                  count(*)
           from stage_arrivals group by 1, 2, 3, 4, 5"""
    )
    conn.execute(
        """insert into cfd_arrival_totals (team, project, item_type, stage_index, arrivals)
           select team, project, item_type, stage_index, count(*)
           from stage_arrivals group by 1, 2, 3, 4"""
    )
    conn.execute(
        """insert into stage_catalog (stage_index, stage)
           select distinct on (stage_index) stage_index, stage from stage_intervals
           where stage_index >= 0 order by stage_index
           on conflict (stage_index) do update set stage = excluded.stage"""
    )
    conn.execute("reset work_mem")


def _listed(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(list(v) if isinstance(v, tuple) else v for v in row)


def _drop_indexes(conn: psycopg.Connection[Any], tables: list[str]) -> list[str]:
    """Drop the tables' keys and indexes; the statements that rebuild them, in order.

    Skipped under TimescaleDB, whose hypertables keep their own chunk indexes.
    """
    if conn.execute("select 1 from pg_extension where extname = 'timescaledb'").fetchone():
        return []
    constraints = conn.execute(
        """select c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid)
           from pg_constraint c where c.contype in ('p', 'u')
             and c.conrelid::regclass::text = any(%s)""",
        (tables,),
    ).fetchall()
    indexes = conn.execute(
        """select i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
           from pg_index i where i.indrelid::regclass::text = any(%s)
             and not exists (select 1 from pg_constraint c where c.conindid = i.indexrelid)""",
        (tables,),
    ).fetchall()
    rebuild = [
        f"alter table {t} add constraint {name} {definition}" for t, name, definition in constraints
    ]
    rebuild += [definition for _, definition in indexes]
    for name, _ in indexes:
        conn.execute(f"drop index {name}")
    for table, name, _ in constraints:
        conn.execute(f"alter table {table} drop constraint {name}")
    return rebuild


def load_dora(
    dsn: str, *, seed: int = 7, days: int = 730, end: datetime = END, per_day: float = 24.0
) -> dict[str, Any]:
    """Deployments, the changes they shipped and incidents, shaped as ``processor.dora_store``
    writes them (``per_day`` production deployments across 12 services)."""
    rng = random.Random(seed)
    started = time.monotonic()
    services = [
        (f"{key.lower()}-{i}", f"acme/{key.lower()}-{i}", team)
        for team, key in TEAMS
        for i in range(2)
    ]
    counts = {
        "deployments": 0,
        "production_deployments": 0,
        "deployment_changes": 0,
        "incidents": 0,
    }
    deploy_cols = (
        "deployment_id, service, repo, team, environment, is_production, sha, status, "
        "succeeded, started_at, finished_at, url, rollback_of, rolled_back_by, "
        "failed, failure_reason, updated_at"
    )
    with psycopg.connect(dsn) as conn, conn.cursor() as cur, ExitStack() as stack:
        deployments = stack.enter_context(cur.copy(f"copy deployments ({deploy_cols}) from stdin"))
        rows_prod: list[tuple[Any, ...]] = []
        rows_changes: list[tuple[Any, ...]] = []
        rows_incidents: list[tuple[Any, ...]] = []
        at = end - timedelta(days=days)
        n = 0
        while True:
            at += timedelta(seconds=rng.expovariate(per_day / 86_400.0))
            if at >= end:
                break
            n += 1
            service, repo, team = services[rng.randrange(len(services))]
            finished = at + timedelta(seconds=rng.uniform(120, 1200))
            failed = rng.random() < 0.08
            status = "failure" if failed else "success"
            sha = f"{n:040x}"
            deployment_id = f"{repo}/{n}"
            deployments.write_row(
                (
                    deployment_id,
                    service,
                    repo,
                    team,
                    "production",
                    True,
                    sha,
                    status,
                    not failed,
                    at,
                    finished,
                    None,
                    None,
                    None,
                    failed,
                    "status" if failed else None,
                    finished,
                )
            )
            rows_prod.append(
                (
                    deployment_id,
                    finished,
                    service,
                    repo,
                    team,
                    "production",
                    not failed,
                    failed,
                    "status" if failed else None,
                )
            )
            if not failed:
                for c in range(rng.randint(1, 5)):
                    committed = finished - timedelta(hours=rng.expovariate(1 / 30.0) + 0.1)
                    rows_changes.append(
                        (
                            service,
                            repo,
                            team,
                            f"{n:032x}{c:08x}",
                            deployment_id,
                            finished,
                            committed,
                            (finished - committed).total_seconds(),
                            None,
                            "commit",
                        )
                    )
            elif rng.random() < 0.4:
                opened = finished + timedelta(minutes=rng.uniform(5, 120))
                resolved = opened + timedelta(hours=rng.expovariate(1 / 6.0))
                rows_incidents.append(
                    (
                        f"inc-{n}",
                        service,
                        repo,
                        team,
                        "degraded",
                        opened,
                        resolved,
                        (resolved - opened).total_seconds(),
                        None,
                        None,
                        deployment_id,
                        "window",
                        resolved,
                    )
                )
        counts["deployments"] = n
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        for table, columns, rows in (
            (
                "production_deployments",
                "deployment_id, finished_at, service, repo, team, "
                "environment, succeeded, failed, failure_reason",
                rows_prod,
            ),
            (
                "deployment_changes",
                "service, repo, team, sha, deployment_id, deployed_at, "
                "committed_at, lead_time_s, pull_request, kind",
                rows_changes,
            ),
            (
                "incidents",
                "incident_id, service, repo, team, title, opened_at, resolved_at, "
                "time_to_restore_s, root_cause_sha, deployment_url, deployment_id, attribution, "
                "updated_at",
                rows_incidents,
            ),
        ):
            with cur.copy(f"copy {table} ({columns}) from stdin") as copy:
                for row in rows:
                    copy.write_row(row)
            counts[table] = len(rows)
            cur.execute(f"analyze {table}")
    return {"rows": counts, "total_s": round(time.monotonic() - started, 1)}
