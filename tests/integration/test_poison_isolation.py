"""A batch the database refuses because of one event: the processor folds the batch in
halves until the one event is alone, dead-letters it, and stores every other event.
Real PostgreSQL; the broker is not involved (the records are built here)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from aiokafka import ConsumerRecord

from processor.consumer import Processor, decode
from processor.projections import ProjectionRegistry
from processor.stages import load_stage_config
from processor.work_item_store import WorkItemsProjection
from schemas.events import WorkItemUpserted

pytestmark = pytest.mark.integration

AT = datetime(2024, 3, 1, 9, tzinfo=UTC)


def record(offset: int, title: str) -> ConsumerRecord[bytes, bytes]:
    event = WorkItemUpserted(
        event_id=f"iso-{offset}", source="jira", occurred_at=AT, received_at=AT,
        key=f"jira:{offset}", item_id=f"jira:{offset}", display_key=f"ISO-{offset}",
        title=title, created_at=AT,
    )  # fmt: skip
    value = event.model_dump_json().encode()
    return ConsumerRecord("t", 0, offset, 0, 0, None, value, None, 0, len(value), ())


class Counting(Processor):
    transactions = 0

    async def _fold_once(self, events: Any) -> None:
        self.transactions += 1
        await super()._fold_once(events)


async def test_one_poison_event_is_isolated_in_log_steps(db_dsn: str) -> None:
    # PostgreSQL refuses a NUL character in jsonb (and text): valid JSON, valid event.
    records = [record(i, "bad\u0000title" if i == 37 else f"ok {i}") for i in range(64)]
    decoded, dead = decode(records)
    assert not dead, "the poison event is a valid canonical event"
    registry = ProjectionRegistry([WorkItemsProjection(load_stage_config(), cache_events=100)])
    processor = Counting(
        consumer=None,  # type: ignore[arg-type]  # not polled in this test
        producer=None,  # type: ignore[arg-type]
        dsn=db_dsn,
        registry=registry,
        dlq_topic="dlq",
    )
    try:
        letters = await processor._fold_with_retry(
            [d.event for d in decoded], decoded, asyncio.Event()
        )
    finally:
        if processor._conn is not None:
            await processor._conn.close()
    assert [(d.record.offset, d.reason.startswith("fold failed")) for d in letters] == [(37, True)]
    # The whole batch once, then 2 halves per level down to one event (64 → 1: 6).
    assert processor.transactions <= 1 + 2 * 6
    with psycopg.connect(db_dsn) as conn:
        stored = {r[0] for r in conn.execute("select event_id from events")}
        items = conn.execute("select count(*) from work_items").fetchone()
    assert stored == {f"iso-{i}" for i in range(64) if i != 37}
    assert items is not None and items[0] == 63
