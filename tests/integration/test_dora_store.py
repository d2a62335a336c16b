"""The DORA projection's SQL adapter on a real PostgreSQL: batches in, the fold's rows out."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import astuple, fields
from typing import Any

import pytest
import pytest_asyncio
from psycopg import AsyncConnection

from processor.consumer import EventStore
from processor.dora import DoraConfig, DoraEvent, IncidentRow, fold_service
from processor.dora_store import DoraProjection
from processor.projections import ProjectionRegistry
from tests.pipeline import wait_for
from tests.unit.test_dora_fold import SHOP, Events, rich_scenario

pytestmark = pytest.mark.integration

BILLING = "acme/billing"


@pytest_asyncio.fixture(loop_scope="session")
async def conn(db_dsn: str) -> AsyncIterator[AsyncConnection[Any]]:
    async with await AsyncConnection.connect(db_dsn) as connection:
        yield connection


STORE = EventStore(ProjectionRegistry([DoraProjection(DoraConfig())]))


async def fold(conn: AsyncConnection[Any], events: Sequence[DoraEvent]) -> None:
    async with conn.transaction():
        await STORE.fold(conn, events)


async def rows(conn: AsyncConnection[Any], table: str, key: str) -> list[tuple[Any, ...]]:
    # The fold's own columns (incidents.service_path is the attribution step's, 0005).
    columns = ", ".join(f.name for f in fields(IncidentRow)) if table == "incidents" else "*"
    async with conn.cursor() as cur:
        await cur.execute(f"select {columns} from {table} order by {key}")
        return [tuple(r) for r in await cur.fetchall()]


async def test_batches_in_any_order_give_the_folds_rows(conn: AsyncConnection[Any]) -> None:
    """Events folded in shuffled batches, some twice, leave exactly the pure fold's rows."""
    events = rich_scenario()
    shuffled = events + events[:7]
    random.Random(4).shuffle(shuffled)
    for i in range(0, len(shuffled), 5):
        await fold(conn, shuffled[i : i + 5])
    expected = [fold_service(s, events, DoraConfig()) for s in (BILLING, SHOP)]
    deployments = sorted(astuple(d) for p in expected for d in p.deployments)
    assert await rows(conn, "deployments", "deployment_id") == deployments
    changes = sorted(astuple(c) for p in expected for c in p.changes)
    assert await rows(conn, "deployment_changes", "service, repo, sha") == changes
    incidents = sorted(astuple(i) for p in expected for i in p.incidents)
    assert await rows(conn, "incidents", "incident_id") == incidents
    production = await rows(conn, "production_deployments", "deployment_id")
    assert [r[0] for r in production] == sorted(
        d.deployment_id for p in expected for d in p.deployments
        if d.is_production and d.finished_at is not None
    )


async def test_commits_wait_for_the_first_deployment(conn: AsyncConnection[Any]) -> None:
    """Commits of a repository that never deployed derive nothing until a deployment comes."""
    ev = Events()
    ev.push("main", "base", ("c1", 0))
    await fold(conn, ev.all)
    assert await rows(conn, "deployment_changes", "sha") == []
    before = len(ev.all)
    ev.deploy(1, "c1", 1, ("success", 2))
    await fold(conn, ev.all[before:])
    changed = await rows(conn, "deployment_changes", "sha")
    assert [(r[4], r[7]) for r in changed] == [("acme/shop:1", 7200.0)]


async def test_incident_alone_is_attributed_to_deployments_folded_earlier(
    conn: AsyncConnection[Any],
) -> None:
    """An incident batch (service entity) sees the service's deployments of every repository."""
    ev = Events(service="shop")
    ev.deploy(1, "a", 1, ("success", 2))
    ev.deploy(2, "b", 1, ("success", 3), repo=BILLING)
    await fold(conn, ev.all)
    before = len(ev.all)
    ev.incident(9, opened=4, resolved=5)
    await fold(conn, ev.all[before:])
    incidents = await rows(conn, "incidents", "incident_id")
    assert [(r[0], r[10], r[11]) for r in incidents] == [("acme/shop#9", "acme/billing:2",
                                                         "window")]
    failed = await rows(conn, "deployments", "deployment_id")
    assert [(r[0], r[14], r[15]) for r in failed] == [
        ("acme/billing:2", True, "incident"), ("acme/shop:1", False, None)]


async def test_a_deployment_that_changes_service_moves(conn: AsyncConnection[Any]) -> None:
    """When the repository → service mapping changes, the deployment leaves its old service."""
    ev = Events(service="old")
    ev.deploy(1, "a", 1)
    await fold(conn, ev.all)
    moved = Events(service="new")
    moved.deploy(1, "a", 1, ("success", 2))
    await fold(conn, moved.all[1:])
    deployments = await rows(conn, "deployments", "deployment_id")
    assert [(r[0], r[1], r[8]) for r in deployments] == [("acme/shop:1", "new", True)]


async def test_redelivered_batch_changes_nothing(conn: AsyncConnection[Any]) -> None:
    """The same events again are not stored twice, and the rows stay as they were."""
    events = rich_scenario()
    await fold(conn, events)
    first = await rows(conn, "deployments", "deployment_id")
    async with conn.transaction():
        assert await STORE.fold(conn, events) == 0
    assert await rows(conn, "deployments", "deployment_id") == first


async def test_two_processors_refreshing_one_service_serialize(db_dsn: str) -> None:
    """A deployment batch and an incident batch of one service, folded at the same time by
    two connections: the second waits for the first, then sees its rows (no key clash)."""
    ev = Events()
    ev.deploy(1, "a", 1, ("success", 2))
    deployments = list(ev.all)
    ev.incident(9, opened=3)
    incidents = ev.all[len(deployments):]
    async with await AsyncConnection.connect(db_dsn) as first, \
            await AsyncConnection.connect(db_dsn, autocommit=True) as second, \
            await AsyncConnection.connect(db_dsn, autocommit=True) as observer:
        await first.execute("begin")
        await STORE.fold(first, deployments)
        await first.execute("select 1")
        waiting = asyncio.create_task(fold(second, incidents))

        async def second_is_blocked() -> bool:
            cur = await observer.execute(
                "select wait_event_type from pg_stat_activity where pid = %s",
                (second.info.backend_pid,),
            )
            row = await cur.fetchone()
            return row is not None and row[0] == "Lock"

        await wait_for(second_is_blocked, what="the second refresh to wait for the first")
        await first.execute("commit")
        await waiting
    async with await AsyncConnection.connect(db_dsn) as conn:
        blamed = await rows(conn, "incidents", "incident_id")
        assert [(r[0], r[10]) for r in blamed] == [("acme/shop#9", "acme/shop:1")]
        assert [r[15] for r in await rows(conn, "deployments", "deployment_id")] == ["incident"]
