"""SQL adapter of the work-item projection: load history, replace derived rows.

Each touched item is recomputed from its full history (``fold_work_item``), so
the rows are exact whatever the arrival order. Two things keep that cheap:

- the history comes from :class:`~processor.history_cache.HistoryCache` when the
  store's event count confirms it, else it is read back;
- when the cache also holds the rows derived last time (which are then the rows
  in the database: derived rows are a function of the events, and only the
  processor, ``replay`` and ``rebuild`` write them — the latter two bump the
  epoch), only the rows that differ are deleted and inserted. An in-order move
  changes about four rows of an item (its new transition, the stay it ends, the
  stay it starts, the item), not all of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from psycopg import AsyncConnection

from processor.copy_rows import copy_rows, pg_types
from processor.history_cache import HistoryCache
from processor.metrics import HISTORY_CACHE
from processor.stages import StageConfig
from processor.work_items import (
    CompletionRow,
    StageIntervalRow,
    TransitionRow,
    WorkItemEvent,
    WorkItemProjection,
    WorkItemRow,
    fold_work_item,
)
from schemas.events import CanonicalEvent, parse_event_json

# table → (row type, the primary key's columns)
_TABLES: dict[str, tuple[type[tuple[Any, ...]], tuple[str, ...]]] = {
    "work_items": (WorkItemRow, ("item_id",)),
    "transitions": (TransitionRow, ("item_id", "occurred_at", "event_id")),
    "stage_intervals": (StageIntervalRow, ("item_id", "seq")),
    "completions": (CompletionRow, ("item_id", "completed_at")),
}
_KEY_TYPES = {
    "item_id": "text",
    "event_id": "text",
    "occurred_at": "timestamptz",
    "completed_at": "timestamptz",
    "seq": "int",
}


def _table_rows(p: WorkItemProjection) -> dict[str, frozenset[tuple[Any, ...]]]:
    return {
        "work_items": frozenset((p.item,) if p.item is not None else ()),
        "transitions": frozenset(p.transitions),
        "stage_intervals": frozenset(p.intervals),
        "completions": frozenset((p.completion,) if p.completion is not None else ()),
    }


class _Guess(NamedTuple):
    """An item folded from its cached history plus the batch, before the store said
    which of the batch's events were new."""

    derived_before: WorkItemProjection
    new_ids: frozenset[str]
    projection: WorkItemProjection


class WorkItemsProjection:
    name = "work_items"
    event_types = frozenset({"work_item.upserted", "work_item.transitioned", "work_item.deleted"})

    def __init__(self, stages: StageConfig, cache_events: int = 0) -> None:
        self.stages = stages
        self.cache: HistoryCache[WorkItemEvent, WorkItemProjection] = HistoryCache(cache_events)
        self._guesses: dict[str, _Guess] = {}
        self.anticipated = 0  # items whose anticipated fold was used

    def entity_of(self, event: CanonicalEvent) -> str:
        return str(getattr(event, "item_id"))  # noqa: B009 - every claimed type has it

    def forget(self) -> None:
        """The transaction that used the cache rolled back: trust nothing in it."""
        self.cache.clear()
        self._guesses = {}

    def anticipate(self, batch: Mapping[str, Sequence[CanonicalEvent]]) -> None:
        """While the store inserts the batch (PostgreSQL's time), fold from memory the
        items whose history is cached: cached history + the batch's events not in it.
        :meth:`refresh` takes such a result only when the store then confirms exactly
        that history — the cache entry it verified by count is the one used here, and
        the events the insert found new are exactly the ones added here — so it is
        the fold of the same set of events (the fold depends on nothing else)."""
        guesses: dict[str, _Guess] = {}
        for entity, events in batch.items():
            cached = self.cache.peek(entity)
            if cached is None:
                continue
            known = {e.event_id for e in cached.history}
            new = [e for e in events if e.event_id not in known]
            if not new:
                continue  # redelivered only: the cache holds them, so nothing is stored
            history: list[WorkItemEvent] = cached.history + new  # type: ignore[operator]
            guesses[entity] = _Guess(
                cached.derived,
                frozenset(e.event_id for e in new),
                fold_work_item(entity, history, self.stages),
            )
        self._guesses = guesses

    async def refresh(
        self,
        conn: AsyncConnection[Any],
        entities: Sequence[str],
        fresh: Mapping[str, Sequence[CanonicalEvent]] | None = None,
    ) -> None:
        items = list(entities)
        fresh = fresh or {}
        guesses, self._guesses = self._guesses, {}
        history, before = await self._histories(conn, items, fresh)
        projections = []
        for e in items:
            guess = guesses.get(e)
            if (
                guess is not None
                and before.get(e) is guess.derived_before
                and guess.new_ids == {event.event_id for event in fresh.get(e, ())}
            ):
                projections.append(guess.projection)
                self.anticipated += 1
            else:
                projections.append(fold_work_item(e, history[e], self.stages))
        await replace_rows(conn, items, projections, before)
        if self.cache.max_events:
            for p in projections:
                self.cache.put(p.item_id, history[p.item_id], p)

    async def _histories(
        self,
        conn: AsyncConnection[Any],
        entities: list[str],
        fresh: Mapping[str, Sequence[CanonicalEvent]],
    ) -> tuple[dict[str, list[WorkItemEvent]], dict[str, WorkItemProjection]]:
        """Each entity's full stored history — cached (plus ``fresh``, the events this
        transaction stored) when the store's count agrees, else read back — and, for
        the cached ones, the projection whose rows the database holds."""
        history: dict[str, list[WorkItemEvent]] = {}
        before: dict[str, WorkItemProjection] = {}
        if self.cache.max_events:
            async with conn.cursor() as cur:
                await cur.execute("select epoch from events_epoch")
                row = await cur.fetchone()
                self.cache.at_epoch(int(row[0]) if row else 0)
                await cur.execute(
                    "select entity, count(*) from events "
                    "where projection = %s and entity = any(%s) group by entity",
                    (self.name, entities),
                )
                stored = dict(await cur.fetchall())
            for entity in entities:
                cached = self.cache.get(entity)
                known = cached.history if cached else []
                new = fresh.get(entity, ())
                if stored.get(entity, 0) == len(known) + len(new):
                    history[entity] = known + list(new)  # type: ignore[arg-type]
                    if cached is not None:
                        before[entity] = cached.derived
        missed = [e for e in entities if e not in history]
        self.cache.hits += len(entities) - len(missed)
        self.cache.misses += len(missed)
        HISTORY_CACHE.labels(outcome="hit").inc(len(entities) - len(missed))
        HISTORY_CACHE.labels(outcome="miss").inc(len(missed))
        if missed:
            for entity in missed:
                history[entity] = []
            async with conn.cursor() as cur:
                await cur.execute(
                    "select entity, payload::text from events "
                    "where projection = %s and entity = any(%s)",
                    (self.name, missed),
                )
                for entity, payload in await cur.fetchall():
                    history[entity].append(parse_event_json(payload))  # type: ignore[arg-type]
        return history, before


async def replace_rows(
    conn: AsyncConnection[Any],
    item_ids: list[str],
    projections: Sequence[WorkItemProjection],
    before: Mapping[str, WorkItemProjection] | None = None,
) -> None:
    """Make the database hold ``projections``' rows for ``item_ids``. Items in
    ``before`` (the projection the database holds now) get only their changed rows
    rewritten; the others are deleted and inserted whole."""
    before = before or {}
    whole = [i for i in item_ids if i not in before]
    gone: dict[str, list[tuple[Any, ...]]] = {table: [] for table in _TABLES}
    added: dict[str, list[tuple[Any, ...]]] = {table: [] for table in _TABLES}
    for p in projections:
        new = _table_rows(p)
        old = before.get(p.item_id)
        if old is None:
            for table in _TABLES:
                added[table].extend(new[table])
            continue
        previous = _table_rows(old)
        for table in _TABLES:
            gone[table].extend(previous[table] - new[table])
            added[table].extend(new[table] - previous[table])
    async with conn.cursor() as cur:
        for table, (row_type, key) in _TABLES.items():
            if whole:
                await cur.execute(f"delete from {table} where item_id = any(%s)", (whole,))
            if gone[table]:
                await _delete_keys(cur, table, row_type, key, gone[table])
        for table, (row_type, _) in _TABLES.items():
            if added[table]:
                await copy_rows(cur, table, *pg_types(row_type), added[table])


async def _delete_keys(
    cur: Any,
    table: str,
    row_type: type[tuple[Any, ...]],
    key: tuple[str, ...],
    rows: list[tuple[Any, ...]],
) -> None:
    positions = [row_type._fields.index(k) for k in key]  # type: ignore[attr-defined]
    arrays = [[row[i] for row in rows] for i in positions]
    unnest = ", ".join(f"%s::{_KEY_TYPES[k]}[]" for k in key)
    await cur.execute(
        f"delete from {table} where ({', '.join(key)}) in (select * from unnest({unnest}))",
        arrays,
    )
