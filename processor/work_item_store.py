"""SQL adapter of the work-item projection: load history, replace derived rows."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import fields
from operator import attrgetter
from typing import Any

from psycopg import AsyncConnection

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

_TABLES: tuple[tuple[str, type[Any]], ...] = (
    ("work_items", WorkItemRow),
    ("transitions", TransitionRow),
    ("stage_intervals", StageIntervalRow),
    ("completions", CompletionRow),
)


def _columns(row_type: type[Any]) -> str:
    return ", ".join(f.name for f in fields(row_type))


# dataclasses.astuple deep-copies every value; a getter per row type does not
# (profiled at a quarter of the processor's time with astuple).
_ROW_GETTERS: dict[type[Any], Any] = {
    row_type: attrgetter(*(f.name for f in fields(row_type))) for _, row_type in _TABLES
}


def _row(value: Any) -> tuple[Any, ...]:
    row: tuple[Any, ...] = _ROW_GETTERS[type(value)](value)
    return row


class WorkItemsProjection:
    name = "work_items"
    event_types = frozenset({"work_item.upserted", "work_item.transitioned", "work_item.deleted"})

    def __init__(self, stages: StageConfig) -> None:
        self.stages = stages

    def entity_of(self, event: CanonicalEvent) -> str:
        return str(getattr(event, "item_id"))  # noqa: B009 - every claimed type has it

    async def refresh(self, conn: AsyncConnection[Any], entities: Sequence[str]) -> None:
        history: dict[str, list[WorkItemEvent]] = defaultdict(list)
        async with conn.cursor() as cur:
            await cur.execute(
                "select entity, payload::text from events "
                "where projection = %s and entity = any(%s)",
                (self.name, list(entities)),
            )
            for entity, payload in await cur.fetchall():
                history[entity].append(parse_event_json(payload))  # type: ignore[arg-type]
        projections = [fold_work_item(e, history.get(e, []), self.stages) for e in entities]
        await replace_rows(conn, list(entities), projections)


async def replace_rows(
    conn: AsyncConnection[Any], item_ids: list[str], projections: Sequence[WorkItemProjection]
) -> None:
    rows: dict[str, list[tuple[Any, ...]]] = {table: [] for table, _ in _TABLES}
    for p in projections:
        if p.item is not None:
            rows["work_items"].append(_row(p.item))
        rows["transitions"].extend(_row(t) for t in p.transitions)
        rows["stage_intervals"].extend(_row(i) for i in p.intervals)
        if p.completion is not None:
            rows["completions"].append(_row(p.completion))
    async with conn.cursor() as cur:
        for table, _ in _TABLES:
            await cur.execute(f"delete from {table} where item_id = any(%s)", (item_ids,))
        for table, row_type in _TABLES:
            if not rows[table]:
                continue
            async with cur.copy(f"copy {table} ({_columns(row_type)}) from stdin") as copy:
                for row in rows[table]:
                    await copy.write_row(
                        [list(v) if isinstance(v, tuple) else v for v in row]
                        if table == "work_items"
                        else row
                    )
