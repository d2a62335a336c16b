"""The processor's two shortcuts on a real PostgreSQL, each against the plain path:

- the work-item history cache gives exactly the rows of a full re-read, also when
  another writer stored events the cache never saw, or a transaction rolled back;
  folds anticipated from it while the batch is inserted are used only when the
  store confirms them;
- a deferred projection (DORA) marks what a batch touched, and its flush leaves
  exactly the rows an immediate refresh leaves; a flush that rolls back loses no mark.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import pytest_asyncio
from psycopg import AsyncConnection
from psycopg.conninfo import make_conninfo

from processor import deferred
from processor.consumer import EventStore
from processor.dora import DoraConfig
from processor.dora_store import DoraProjection
from processor.projections import ProjectionRegistry
from processor.stages import load_stage_config
from processor.work_item_store import WorkItemsProjection
from schemas.events import CanonicalEvent
from tests.unit.test_dora_fold import rich_scenario
from tests.unit.test_work_item_fold import ItemEvents

pytestmark = pytest.mark.integration

STAGES = load_stage_config()
TABLES = ("work_items", "transitions", "stage_intervals", "completions")
DORA_TABLES = ("deployments", "production_deployments", "deployment_changes", "incidents")


@pytest_asyncio.fixture(loop_scope="session")
async def conn(db_dsn: str) -> AsyncIterator[AsyncConnection[Any]]:
    async with await AsyncConnection.connect(db_dsn) as connection:
        yield connection


def work_store(cache_events: int) -> tuple[EventStore, WorkItemsProjection]:
    projection = WorkItemsProjection(STAGES, cache_events=cache_events)
    return EventStore(ProjectionRegistry([projection])), projection


async def fold(conn: AsyncConnection[Any], store: EventStore, events: Sequence[Any]) -> None:
    async with conn.transaction():
        await store.fold(conn, events)


async def table_rows(conn: AsyncConnection[Any], tables: Sequence[str]) -> dict[str, list[str]]:
    out = {}
    for table in tables:
        cur = await conn.execute(f"select t::text from {table} t order by 1")
        out[table] = [r[0] for r in await cur.fetchall()]
    return out


async def refold_from_store(conn: AsyncConnection[Any]) -> dict[str, list[str]]:
    """The plain path: every item recomputed from a full read of its stored events."""
    cur = await conn.execute("select distinct entity from events where projection = 'work_items'")
    entities = sorted(r[0] for r in await cur.fetchall())
    async with conn.transaction():
        await WorkItemsProjection(STAGES).refresh(conn, entities)
    return await table_rows(conn, TABLES)


def items(n: int) -> list[ItemEvents]:
    return [ItemEvents(item_id=f"jira:{i}") for i in range(n)]


async def test_cached_histories_give_the_rows_of_a_full_reread(
    conn: AsyncConnection[Any],
) -> None:
    store, projection = work_store(cache_events=1000)
    people = items(3)
    await fold(conn, store, [e for p in people for e in p.created(0)])
    await fold(conn, store, [p.moved(1, "To Do", "In Progress") for p in people])
    # Another processor (after a rebalance) stores a move this cache never saw.
    other, _ = work_store(cache_events=0)
    await fold(conn, other, [people[0].moved(2, "In Progress", "In Review")])
    # Late: an earlier event arrives after later ones.
    await fold(conn, store, [p.moved(3, "In Review", "Done") for p in people])
    await fold(conn, store, [people[1].moved(0.5, "To Do", "Selected for Development")])
    assert projection.cache.hits > 0, "the cache was never used"
    # New items' histories are the batch itself (hits); only the foreign write misses.
    assert projection.cache.misses == 1
    cached = await table_rows(conn, TABLES)
    assert cached == await refold_from_store(conn)
    assert any("In Review" in row for row in cached["transitions"])


async def test_folds_anticipated_during_the_insert_are_used_only_when_confirmed(
    conn: AsyncConnection[Any],
) -> None:
    """Cached items are folded while the store inserts the batch; a result is used only
    if the store confirms the history it assumed, else the item is folded again."""
    store, projection = work_store(cache_events=1000)
    people = items(3)
    await fold(conn, store, [e for p in people for e in p.created(0)])
    await fold(conn, store, [p.moved(1, "To Do", "In Progress") for p in people])
    assert projection.anticipated == 3  # every item was cached: all three guesses held
    # A duplicate the store already holds (redelivered), beside a new move: still right.
    again = people[2].moved(2, "In Progress", "In Review")
    await fold(conn, store, [again])
    await fold(conn, store, [again, people[2].moved(3, "In Review", "Done")])
    assert projection.anticipated == 5
    # Another writer stored events this cache never saw. A batch without them: the
    # guess lacks them (it would lose the move to In Review), the count says so.
    other, _ = work_store(cache_events=0)
    foreign = people[0].moved(4, "In Progress", "In Review")
    await fold(conn, other, [foreign])
    await fold(conn, store, [people[0].moved(5, "In Review", "QA")])
    assert projection.anticipated == 5, "a guess the store contradicted was used"
    assert await table_rows(conn, TABLES) == await refold_from_store(conn)
    # A batch that redelivers one of them with a new one: the guess takes both as
    # new, the store found one new: not used either.
    foreign = people[1].moved(6, "In Progress", "In Review")
    await fold(conn, other, [foreign])
    await fold(conn, store, [foreign, people[1].moved(7, "In Review", "Done")])
    assert projection.anticipated == 5
    assert await table_rows(conn, TABLES) == await refold_from_store(conn)


async def test_a_rolled_back_batch_leaves_nothing_in_the_cache(
    conn: AsyncConnection[Any],
) -> None:
    store, _ = work_store(cache_events=1000)
    item = ItemEvents(item_id="jira:rb")
    await fold(conn, store, item.created(0))
    ghost = item.moved(1, "To Do", "Done")
    with pytest.raises(RuntimeError):
        async with conn.transaction():
            await store.fold(conn, [ghost])
            raise RuntimeError("the batch fails after its refresh")
    store.forget()  # what the processor does when a batch's transaction fails
    await fold(conn, store, [item.moved(2, "To Do", "In Progress")])
    rows = await table_rows(conn, TABLES)
    assert rows == await refold_from_store(conn)
    assert not any(ghost.event_id in row for row in rows["transitions"])


async def test_without_forget_a_count_mismatch_still_rereads(
    conn: AsyncConnection[Any],
) -> None:
    """Belt and braces: the store's count disagrees with the cache, so it is not used."""
    store, projection = work_store(cache_events=1000)
    item = ItemEvents(item_id="jira:rb2")
    await fold(conn, store, item.created(0))
    with pytest.raises(RuntimeError):
        async with conn.transaction():
            await store.fold(conn, [item.moved(1, "To Do", "Done")])
            raise RuntimeError("rolled back, cache not told")
    misses = projection.cache.misses
    await fold(conn, store, [item.moved(2, "To Do", "In Progress")])
    assert projection.cache.misses == misses + 1
    assert await table_rows(conn, TABLES) == await refold_from_store(conn)


def dora_store(deferred_names: Sequence[str]) -> EventStore:
    return EventStore(ProjectionRegistry([DoraProjection(DoraConfig())]), deferred_names)


async def fold_in_batches(
    conn: AsyncConnection[Any], store: EventStore, events: Sequence[CanonicalEvent]
) -> None:
    for i in range(0, len(events), 4):
        await fold(conn, store, events[i : i + 4])


async def test_deferred_dora_marks_then_flushes_to_the_immediate_rows(
    conn: AsyncConnection[Any], db_dsn: str, pg_server_dsn: str, template_database: str
) -> None:
    events = rich_scenario()
    await fold_in_batches(conn, dora_store(["dora"]), events)
    assert await deferred.pending(conn) > 0
    assert (await table_rows(conn, ["deployments"]))["deployments"] == []

    store = dora_store(["dora"])
    async with conn.transaction():
        assert await store.flush(conn) > 0
    assert await deferred.pending(conn) == 0
    flushed = await table_rows(conn, DORA_TABLES)
    assert flushed["deployments"], "the flush derived nothing"

    # The same events through the immediate path, in a second database.
    name = f"fm_t_{uuid.uuid4().hex[:12]}"
    async with await AsyncConnection.connect(pg_server_dsn, autocommit=True) as admin:
        await admin.execute(f"create database {name} template {template_database}")
    other = make_conninfo(pg_server_dsn, dbname=name)
    try:
        async with await AsyncConnection.connect(other) as immediate:
            await fold_in_batches(immediate, dora_store([]), events)
            assert await deferred.pending(immediate) == 0
            assert await table_rows(immediate, DORA_TABLES) == flushed
    finally:
        async with await AsyncConnection.connect(pg_server_dsn, autocommit=True) as admin:
            await admin.execute(f"drop database if exists {name} with (force)")


async def test_a_flush_that_rolls_back_keeps_its_marks(conn: AsyncConnection[Any]) -> None:
    store = dora_store(["dora"])
    await fold_in_batches(conn, store, rich_scenario())
    marked = await deferred.pending(conn)
    with pytest.raises(RuntimeError):
        async with conn.transaction():
            await store.flush(conn)
            raise RuntimeError("the refresh fails")
    assert await deferred.pending(conn) == marked
    async with conn.transaction():
        await store.flush(conn)
    assert await deferred.pending(conn) == 0


async def test_a_batch_does_not_wait_for_a_running_refresh(
    conn: AsyncConnection[Any], db_dsn: str
) -> None:
    """The refresh runs beside the batches (revision 0010): a batch marking entities
    that a refresh has taken, and not yet committed, goes through at once; its marks
    stay for the next refresh, which then leaves the rows of one refresh of it all."""
    events = rich_scenario()
    half = len(events) // 2
    store = dora_store(["dora"])
    await fold_in_batches(conn, store, events[:half])
    async with await AsyncConnection.connect(db_dsn) as refresher:
        async with refresher.transaction():
            taken = await store.flush(refresher)  # marks taken (deleted), not committed
            assert taken > 0
            # Before 0010 this waited on the uncommitted deletion of the same marks.
            await asyncio.wait_for(fold_in_batches(conn, store, events[half:]), timeout=10)
        assert await deferred.pending(conn) > 0  # the later batches' marks stay
    async with conn.transaction():
        await store.flush(conn)
    assert await deferred.pending(conn) == 0
    overlapped = await table_rows(conn, DORA_TABLES)
    async with conn.transaction():  # every service once more, from all its events
        cur = await conn.execute("select distinct entity from events where projection = 'dora'")
        await DoraProjection(DoraConfig()).refresh(conn, [r[0] for r in await cur.fetchall()])
    assert overlapped["deployments"], "nothing derived"
    assert await table_rows(conn, DORA_TABLES) == overlapped


async def test_a_deferred_name_must_be_a_projection() -> None:
    with pytest.raises(KeyError):
        dora_store(["no-such-projection"])
