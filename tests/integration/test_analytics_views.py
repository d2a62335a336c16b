"""The analytics schema is the SQL contract: every view and every Metabase card works
for ``flowmetrics_reader``, which can read that schema and nothing else."""

from __future__ import annotations

import importlib
import re
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import pytest_asyncio
from psycopg import errors, sql

from api.analytics_queries import (
    aging_wip,
    cumulative_flow,
    cycle_time_scatter,
    daily_throughput,
    time_in_stage,
)
from api.filters import Filters
from infra.db import migrate
from infra.metabase.dashboard import CARDS
from processor.stages import load_stage_config
from processor.work_item_store import replace_rows
from processor.work_items import fold_work_item
from schemas.events import WorkItemTransitioned, WorkItemUpserted

pytestmark = pytest.mark.integration

READER = "flowmetrics_reader"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "analytics.md"
NOW = datetime.now(UTC).replace(microsecond=0)

# The contract: view -> columns, in order. Changing one is a breaking change
# for every dashboard built on it (docs/analytics.md).
CONTRACT: dict[str, list[str]] = {
    "work_items": ["item_id", "display_key", "source", "title", "item_type", "project", "team",
                   "status", "stage", "flow_state", "created_at", "started_at", "completed_at",
                   "assignee", "labels", "url", "updated_at", "age_hours"],
    "transitions": ["item_id", "event_id", "occurred_at", "from_status", "to_status",
                    "from_stage", "to_stage", "team", "project", "item_type"],
    "completions": ["item_id", "display_key", "completed_at", "started_at", "created_at", "team",
                    "project", "item_type", "cycle_time_s", "cycle_time_hours", "lead_time_s",
                    "lead_time_hours"],
    "stage_intervals": ["item_id", "seq", "stage", "stage_index", "flow_state", "entered_at",
                        "exited_at", "hours", "team", "project", "item_type"],
    "daily_throughput": ["day", "team", "project", "item_type", "items",
                         "mean_cycle_time_hours"],
    "stages": ["stage_index", "stage"],
    "stage_arrivals": ["item_id", "stage_index", "stage", "arrived_at", "team", "project",
                       "item_type"],
    "cfd_daily_arrivals": ["day", "team", "project", "item_type", "stage_index", "stage",
                           "arrivals"],
    "aging_wip": ["item_id", "display_key", "title", "team", "project", "item_type", "stage",
                  "started_at", "age_hours", "reference_items", "p50_hours", "p85_hours",
                  "p95_hours", "flag"],
    "deployments": ["deployment_id", "service", "repo", "team", "environment", "is_production",
                    "sha", "status", "succeeded", "failed", "failure_reason", "started_at",
                    "finished_at", "url", "rollback_of", "rolled_back_by"],
    "deployment_changes": ["service", "repo", "team", "sha", "deployment_id", "deployed_at",
                           "committed_at", "lead_time_s", "lead_time_hours", "pull_request",
                           "kind"],
    "incidents": ["incident_id", "service", "repo", "team", "title", "opened_at", "resolved_at",
                  "time_to_restore_s", "time_to_restore_hours", "deployment_id", "attribution"],
    "dora_weekly": ["week", "team", "deployments", "finished_deployments", "failed_deployments",
                    "change_failure_rate", "lead_time_p50_hours", "lead_time_p85_hours",
                    "incidents", "time_to_restore_p50_hours", "time_to_restore_p85_hours"],
}


def on_database(server_dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(server_dsn)._replace(path=f"/{name}"))


def hours_ago(h: float) -> datetime:
    return NOW - timedelta(hours=h)


def item_events(item: str, team: str, moves: Sequence[tuple[float, str]]
                ) -> list[WorkItemUpserted | WorkItemTransitioned]:
    """Created ``moves[0][0]`` hours ago, then moved at each later (hours ago, status)."""
    def envelope(n: int, at: datetime) -> dict[str, Any]:
        return {"event_id": f"{item}-{n}", "source": "jira", "occurred_at": at,
                "received_at": at, "key": item, "item_id": item}

    created = hours_ago(moves[0][0])
    events: list[WorkItemUpserted | WorkItemTransitioned] = [
        WorkItemUpserted(**envelope(0, created), display_key=item.upper(), team=team,
                         project=team, item_type="Story", status=moves[0][1],
                         created_at=created)
    ]
    previous = None
    for n, (ago, status) in enumerate(moves, start=1):
        events.append(WorkItemTransitioned(**envelope(n, hours_ago(ago)), from_status=previous,
                                           to_status=status))
        previous = status
    return events


SCENARIO = {
    # cycle times 24, 24, 48, 84 h → p50 36, p85 67.8, p95 78.6 (team T)
    "t-1": ("T", [(200, "To Do"), (100, "In Progress"), (76, "Done")]),
    "t-2": ("T", [(200, "To Do"), (90, "In Progress"), (66, "Done")]),
    "t-3": ("T", [(200, "To Do"), (110, "In Progress"), (62, "Done")]),
    "t-4": ("T", [(200, "To Do"), (150, "In Progress"), (66, "Done")]),
    # in progress for 48, 72, 84 hours
    "t-5": ("T", [(100, "To Do"), (48, "In Progress")]),
    "t-6": ("T", [(100, "To Do"), (72, "In Review")]),
    "t-7": ("T", [(100, "To Do"), (84, "In Progress")]),
    # a team without completions
    "u-1": ("U", [(30, "To Do"), (10, "In Progress")]),
}


@pytest.fixture(scope="module")
def analytics_dsn(pg_server_dsn: str, template_database: str) -> Iterator[str]:
    """One migrated database for the module: its tests only read."""
    name = f"fm_an_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {} template {}").format(
            sql.Identifier(name), sql.Identifier(template_database)))
    try:
        yield on_database(pg_server_dsn, name)
    finally:
        with psycopg.connect(pg_server_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(
                sql.Identifier(name)))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def loaded(analytics_dsn: str) -> str:
    """The scenario folded through the processor's own store, plus one of each DORA row."""
    config = load_stage_config()
    db_dsn = analytics_dsn
    async with await psycopg.AsyncConnection.connect(db_dsn) as conn:
        async with conn.transaction():
            projections = [fold_work_item(k, item_events(k, team, moves), config)
                           for k, (team, moves) in SCENARIO.items()]
            await replace_rows(conn, list(SCENARIO), projections)
        async with conn.transaction():
            await conn.execute(
                """insert into deployments (deployment_id, service, repo, team, environment,
                     is_production, sha, status, succeeded, started_at, finished_at, failed,
                     failure_reason, updated_at)
                   values ('d1', 'api', 'org/api', 'T', 'production', true, 'abc', 'success',
                     true, %(a)s, %(b)s, true, 'incident', %(b)s)""",
                {"a": hours_ago(30), "b": hours_ago(29)})
            await conn.execute(
                """insert into production_deployments values ('d1', %(b)s, 'api', 'org/api',
                   'T', 'production', true, true, 'incident')""", {"b": hours_ago(29)})
            await conn.execute(
                """insert into deployment_changes values ('api', 'org/api', 'T', 'abc', 'd1',
                   %(b)s, %(c)s, 36000, null, 'commit')""",
                {"b": hours_ago(29), "c": hours_ago(39)})
            await conn.execute(
                """insert into incidents values ('i1', 'api', 'org/api', 'T', 'down',
                   %(o)s, %(r)s, 7200, null, null, 'd1', 'window', %(r)s)""",
                {"o": hours_ago(20), "r": hours_ago(18)})
    return db_dsn


@pytest.fixture
def reader(loaded: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection with the privileges of flowmetrics_reader (SET ROLE: no password needed)."""
    with psycopg.connect(loaded, autocommit=True) as conn:
        conn.execute(sql.SQL("set role {}").format(sql.Identifier(READER)))
        yield conn


def test_every_view_matches_the_contract_and_is_readable(
    reader: psycopg.Connection[Any],
) -> None:
    """Each documented view exists with its documented columns and returns rows to the reader."""
    found = dict(reader.execute(
        """select table_name, array_agg(column_name::text order by ordinal_position)
           from information_schema.columns where table_schema = 'analytics'
           group by table_name"""
    ).fetchall())
    assert found == CONTRACT
    for view in CONTRACT:
        rows = reader.execute(
            sql.SQL("select * from analytics.{}").format(sql.Identifier(view))
        ).fetchall()
        assert rows, f"analytics.{view} returned nothing"


def test_every_view_and_column_is_documented() -> None:
    """docs/analytics.md has a section per view naming each of its columns."""
    text = DOCS.read_text(encoding="utf-8")
    sections = dict(re.findall(r"### `analytics\.(\w+)`\n(.*?)(?=\n### |\n## |\Z)", text,
                               flags=re.S))
    assert set(CONTRACT) | {"cfd"} <= set(sections)
    for view, columns in CONTRACT.items():
        missing = [c for c in columns if f"`{c}`" not in sections[view]]
        assert not missing, f"analytics.{view}: undocumented {missing}"


def test_aging_wip_view_flags_like_the_api(reader: psycopg.Connection[Any]) -> None:
    """> p85 at risk, > p95 breached against the team's 90 days; no reference, no flag."""
    rows = reader.execute(
        "select display_key, round(age_hours)::int, flag, round(p85_hours::numeric, 1)::float8 "
        "from analytics.aging_wip order by display_key"
    ).fetchall()
    assert rows == [
        ("T-5", 48, "on_track", 67.8),
        ("T-6", 72, "at_risk", 67.8),
        ("T-7", 84, "breached", 67.8),
        ("U-1", 10, None, None),
    ]


def test_cfd_function_for_the_reader(reader: psycopg.Connection[Any]) -> None:
    """analytics.cfd needs no access to the counter tables behind it."""
    today = NOW.date()
    rows = reader.execute(
        "select stage, items from analytics.cfd(%s, %s, 'T') order by stage_index",
        (today, today + timedelta(days=1)),
    ).fetchall()
    assert rows[0] == ("Backlog", 7)
    assert rows[-1] == ("Production", 4)


def test_reader_reads_nothing_else_and_writes_nothing(reader: psycopg.Connection[Any]) -> None:
    """Base tables, counters, keys and the maintenance functions are all out of reach."""
    for statement in (
        "select * from public.work_items",
        "select * from public.events",
        "select * from public.daily_cfd_arrivals",
        "select * from public.deployments",
        "select * from public.api_keys",
        "select * from cfd_counts(current_date, current_date + 1)",
        "select refresh_stage_arrivals(array['t-1'])",
        "select rebuild_stage_arrivals()",
        "insert into analytics.stages values (99, 'x')",
        "delete from analytics.work_items",
        "create view analytics.mine as select 1",
    ):
        with pytest.raises(errors.InsufficientPrivilege):
            reader.execute(statement)


def render(card_sql: str, team: str | None) -> str:
    """What Metabase runs: optional clauses kept (tag as a literal) or dropped."""
    def clause(match: re.Match[str]) -> str:
        return "" if team is None else match.group(1).replace("{{team}}", f"'{team}'")

    return re.sub(r"\[\[(.*?)\]\]", clause, card_sql, flags=re.S)


@pytest.mark.parametrize("card", CARDS, ids=lambda c: c.name)
@pytest.mark.parametrize("team", [None, "T"])
def test_every_dashboard_card_runs_for_the_reader(
    reader: psycopg.Connection[Any], card: Any, team: str | None
) -> None:
    """The dashboard's SQL works with and without the team filter, as the reader."""
    rows = reader.execute(render(card.sql, team).encode()).fetchall()
    assert rows, card.name


def test_role_and_grants_in_a_new_database_of_the_same_server(pg_server_dsn: str) -> None:
    """Migrating another database when the role already exists grants it there too."""
    name = f"fm_role_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    dsn = on_database(pg_server_dsn, name)
    try:
        migrate(dsn)  # from scratch: the role exists already, the grants do not
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute(
                "select count(*) from pg_roles where rolname = %s", (READER,)
            ).fetchone() == (1,)
            conn.execute(sql.SQL("set role {}").format(sql.Identifier(READER)))
            assert conn.execute("select count(*) from analytics.work_items").fetchone() == (0,)
    finally:
        with psycopg.connect(pg_server_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(
                sql.Identifier(name)))


def test_dora_views_only_where_the_tables_allow() -> None:
    """Without revision 0002's tables the DORA views are left out instead of failing."""
    migration = importlib.import_module("infra.migrations.versions.0003_analytics")
    assert migration.dora_view_sql({}) == []
    only_deployments = migration.dora_view_sql(
        {"deployments": set(CONTRACT["deployments"])}
    )
    assert [s.split()[2] for s in only_deployments] == ["analytics.deployments"]


async def test_api_queries_run_as_the_api_role(loaded: str) -> None:
    """The API's own role (revision 0006: reads public, writes nothing) can answer every
    flow-analytics endpoint: nothing here depends on the analytics schema's grants."""
    stages = load_stage_config().stages
    f = Filters(start=NOW - timedelta(days=30), end=NOW + timedelta(hours=1), team="T")
    async with await psycopg.AsyncConnection.connect(loaded, autocommit=True) as conn:
        await conn.execute("set role flowmetrics_api")
        cfd = await cumulative_flow(conn, f, stages)
        assert cfd["days"][-1]["items"]["Production"] == 4
        assert (await aging_wip(conn, f))["summary"]["breached"] == 1
        assert (await cycle_time_scatter(conn, f, 100))["count"] == 4
        assert (await time_in_stage(conn, f, stages, 100))["items_completed"] == 4
        first, after = f.start.date(), f.end.date() + timedelta(days=1)
        assert sum(await daily_throughput(conn, f, first, after)) == 4
