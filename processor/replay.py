"""Rebuilding from what was kept: ``flowmetrics replay`` and ``flowmetrics rebuild``.

- :func:`replay` reads every record of the raw topic, normalizes it again with
  the current mapping code and configuration, and publishes the canonical
  events to the events topic. Stable event ids make a second replay, or the
  processor folding the republished copies, change nothing. Because an event
  whose id is already stored is not folded again (``on conflict do nothing``),
  a mapping fix that changes an event *under the same id* (e.g. a project moved
  to another team) would not reach the database through the topic alone: so
  replay also writes the new versions into the ``events`` table (inserted when
  new, replaced when different, untouched when identical) and refreshes the
  entities they belong to.
- :func:`rebuild` recomputes every derived table from the stored ``events``,
  entity by entity through each projection's ``refresh``, in chunks.

Both take ``lock table events in share row exclusive mode`` per chunk: the
processor's writes wait for the chunk instead of refreshing the same entities
concurrently, so both can run while the processor does.

Not done: events that the current mapping no longer produces at all are not
deleted (the raw topic is not their only origin: the API backfill produces
the same events).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import structlog
from aiokafka import AIOKafkaProducer
from psycopg import AsyncConnection

from collectors.github import GitHubMapping, GitHubPayloadError, normalize_github
from collectors.jira import JiraPayloadError, normalize_jira
from collectors.publisher import RawDelivery, event_record
from processor.projections import ProjectionRegistry
from processor.stages import StageConfig
from processor.topic_reader import read_topic
from schemas.events import CanonicalEvent
from schemas.topics import Topics

log = structlog.get_logger("processor.replay")

EVENTS_LOCK = "lock table events in share row exclusive mode"
# Events or derived rows rewritten in place: processors drop what they cached.
BUMP_EPOCH = "update events_epoch set epoch = epoch + 1"


class UnmappableDelivery(ValueError):
    """A raw delivery the current mapping code cannot normalize."""


# -- raw deliveries ---------------------------------------------------------------


def raw_from_json(value: bytes) -> RawDelivery:
    """A raw-topic record (:meth:`RawDelivery.to_json`) back into a delivery."""
    try:
        data = orjson.loads(value)
        return RawDelivery(
            source=str(data["source"]),
            delivery_id=str(data["delivery_id"]),
            received_at=datetime.fromisoformat(data["received_at"]),
            event_name=str(data.get("event_name", "")),
            body=orjson.dumps(data["body"]),
            headers=dict(data.get("headers") or {}),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UnmappableDelivery(f"not a raw delivery record: {exc!r}") from exc


def normalize_raw(
    raw: RawDelivery, stages: StageConfig, mapping: GitHubMapping
) -> tuple[tuple[CanonicalEvent, ...], str | None]:
    """The canonical events of a delivery under the current mapping, and why none if so."""
    try:
        body = orjson.loads(raw.body)
    except orjson.JSONDecodeError as exc:
        raise UnmappableDelivery(f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise UnmappableDelivery("body is not a JSON object")
    try:
        if raw.source == "jira":
            jira = normalize_jira(body, received_at=raw.received_at, stages=stages)
            return jira.events, jira.ignored
        if raw.source == "github":
            github = normalize_github(raw.event_name, raw.delivery_id, body,
                                      received_at=raw.received_at, mapping=mapping)  # fmt: skip
            return github.events, github.ignored
    except (JiraPayloadError, GitHubPayloadError) as exc:
        raise UnmappableDelivery(str(exc)) from exc
    raise UnmappableDelivery(f"no normalizer for source {raw.source!r}")


# -- replay -------------------------------------------------------------------------


@dataclass
class ReplayReport:
    raw_records: int = 0
    events: int = 0  # published (a delivery kept twice on the raw topic counts twice)
    ignored: int = 0  # deliveries the mapping deliberately maps to nothing
    unmappable: list[tuple[str, str]] = field(default_factory=list)  # (delivery id, why)
    stored_new: int = 0
    stored_changed: int = 0
    entities_refreshed: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "raw_records": self.raw_records,
            "events_published": self.events,
            "ignored_deliveries": self.ignored,
            "unmappable_deliveries": len(self.unmappable),
            "stored_new": self.stored_new,
            "stored_changed": self.stored_changed,
            "entities_refreshed": self.entities_refreshed,
            "seconds": round(self.seconds, 2),
        }


async def replay(
    *,
    bootstrap: str,
    topics: Topics,
    producer: AIOKafkaProducer,
    stages: StageConfig,
    mapping: GitHubMapping,
    dsn: str | None,
    registry: ProjectionRegistry | None,
    batch: int = 2000,
) -> ReplayReport:
    """Re-normalize the raw topic; publish the events; with ``dsn``, store them too."""
    started = time.monotonic()
    report = ReplayReport()
    conn = await AsyncConnection.connect(dsn) if dsn else None
    try:
        async for records in read_topic(bootstrap, topics.raw, batch=batch):
            events: list[CanonicalEvent] = []
            for record in records:
                report.raw_records += 1
                try:
                    raw = raw_from_json(record.value or b"")
                    mapped, ignored = normalize_raw(raw, stages, mapping)
                except UnmappableDelivery as exc:
                    key = (record.key or b"").decode(errors="replace")
                    report.unmappable.append((key, str(exc)))
                    log.warning("replay_unmappable", topic=record.topic, partition=record.partition,
                                offset=record.offset, delivery_id=key, reason=str(exc))  # fmt: skip
                    continue
                report.ignored += ignored is not None and not mapped
                events.extend(mapped)
            await publish_events(producer, topics.events, events)
            report.events += len(events)
            if conn is not None and registry is not None and events:
                new, changed, refreshed = await store_events(conn, registry, events)
                report.stored_new += new
                report.stored_changed += changed
                report.entities_refreshed += refreshed
    finally:
        if conn is not None:
            await conn.close()
    report.seconds = time.monotonic() - started
    return report


async def publish_events(
    producer: AIOKafkaProducer, topic: str, events: Sequence[CanonicalEvent]
) -> None:
    futures = []
    for event in events:
        key, value = event_record(event)
        futures.append(await producer.send(topic, value, key=key))
    await asyncio.gather(*futures)


async def store_events(
    conn: AsyncConnection[Any], registry: ProjectionRegistry, events: Iterable[CanonicalEvent]
) -> tuple[int, int, int]:
    """Upsert events by id (replacing a stored version only when it differs) and refresh
    the entities whose history changed; returns (new, changed, entities refreshed)."""
    rows: dict[str, tuple[Any, ...]] = {}
    for event in events:
        projection = registry.for_event(event)
        if projection is None:
            continue
        rows[event.event_id] = (
            event.event_id, event.type, event.source, projection.name,
            projection.entity_of(event), event.occurred_at, event.received_at,
            orjson.dumps(event.model_dump(mode="json")).decode(),
        )  # fmt: skip
    if not rows:
        return 0, 0, 0
    touched: dict[str, set[str]] = defaultdict(set)
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute(EVENTS_LOCK)
        await cur.execute(BUMP_EPOCH)
        await cur.execute(
            "create temp table replayed (like events including defaults) on commit drop"
        )
        async with cur.copy(
            "copy replayed (event_id, type, source, projection, entity, occurred_at, "
            "received_at, payload) from stdin"
        ) as copy:
            for row in rows.values():
                await copy.write_row(row)
        # The entities the old versions belonged to, in case a fix moved an event.
        await cur.execute(
            """
            select e.projection, e.entity from events e join replayed r using (event_id)
            where (e.payload, e.projection, e.entity)
                  is distinct from (r.payload, r.projection, r.entity)
            """
        )
        changed_before = await cur.fetchall()
        await cur.execute(
            """
            insert into events as e
            select * from replayed
            on conflict (event_id) do update set
                type = excluded.type, source = excluded.source,
                projection = excluded.projection, entity = excluded.entity,
                occurred_at = excluded.occurred_at, received_at = excluded.received_at,
                payload = excluded.payload
            where (e.payload, e.projection, e.entity)
                  is distinct from (excluded.payload, excluded.projection, excluded.entity)
            returning projection, entity
            """
        )
        written = await cur.fetchall()
        for name, entity in [*changed_before, *written]:
            touched[name].add(entity)
        refreshed = await _refresh(conn, registry, touched)
    changed = len(changed_before)
    return len(written) - changed, changed, refreshed


# -- rebuild ------------------------------------------------------------------------


@dataclass
class RebuildReport:
    entities: dict[str, int] = field(default_factory=dict)
    unknown_projections: dict[str, int] = field(default_factory=dict)
    aggregates_refreshed: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "entities_refreshed": dict(self.entities),
            "events_of_unknown_projections": dict(self.unknown_projections),
            "continuous_aggregates_refreshed": self.aggregates_refreshed,
            "seconds": round(self.seconds, 2),
        }


async def rebuild(dsn: str, registry: ProjectionRegistry, *, chunk: int = 500) -> RebuildReport:
    """Every derived row recomputed from the stored events; the same result every time."""
    started = time.monotonic()
    report = RebuildReport()
    async with await AsyncConnection.connect(dsn) as conn:
        for projection in registry.projections:
            done, last = 0, ""
            while True:
                async with conn.transaction(), conn.cursor() as cur:
                    await cur.execute(EVENTS_LOCK)
                    await cur.execute(BUMP_EPOCH)
                    await cur.execute(
                        "select distinct entity from events where projection = %s "
                        "and entity > %s order by entity limit %s",
                        (projection.name, last, chunk),
                    )
                    entities = [row[0] for row in await cur.fetchall()]
                    if not entities:
                        break
                    await projection.refresh(conn, entities)
                done += len(entities)
                last = entities[-1]
                log.info("rebuild_progress", projection=projection.name, entities=done)
            report.entities[projection.name] = done
        known = [p.name for p in registry.projections]
        cur = await conn.execute(
            "select projection, count(*) from events where projection <> all(%s) group by 1",
            (known,),
        )
        report.unknown_projections = {name: n for name, n in await cur.fetchall()}
        await conn.commit()
        report.aggregates_refreshed = await _refresh_continuous_aggregates(conn)
    report.seconds = time.monotonic() - started
    return report


async def _refresh(
    conn: AsyncConnection[Any], registry: ProjectionRegistry, touched: dict[str, set[str]]
) -> int:
    refreshed = 0
    names = {p.name for p in registry.projections}
    for name, entities in touched.items():
        if name not in names:
            log.warning("replay_unknown_projection", projection=name, entities=len(entities))
            continue
        await registry.get(name).refresh(conn, sorted(entities))
        refreshed += len(entities)
    return refreshed


async def _refresh_continuous_aggregates(conn: AsyncConnection[Any]) -> int:
    """With TimescaleDB, refresh every continuous aggregate over all time: its
    policy only covers a recent window, and a rebuild may change any day."""
    cur = await conn.execute("select 1 from pg_extension where extname = 'timescaledb'")
    if await cur.fetchone() is None:
        return 0  # plain PostgreSQL: the aggregates are views, always fresh
    cur = await conn.execute(
        "select format('%I.%I', view_schema, view_name) "
        "from timescaledb_information.continuous_aggregates"
    )
    names = [row[0] for row in await cur.fetchall()]
    await conn.commit()
    await conn.set_autocommit(True)  # CALL refresh_... cannot run inside a transaction
    try:
        for name in names:
            await conn.execute(
                "call refresh_continuous_aggregate(%s::regclass, null, null)", (name,)
            )
    finally:
        await conn.set_autocommit(False)
    return len(names)
