"""The processor: a Kafka consumer-group member that folds batches into PostgreSQL.

One batch (``getmany``) = one database transaction. Offsets are committed only
after that transaction commits, and every write is idempotent by ``event_id``,
so a crash anywhere redelivers at most one batch and changes nothing twice.

Errors:
- an undecodable or invalid record goes to the dead-letter topic with the
  reason and its topic/partition/offset; its partition does not stall;
- the database unreachable: nothing is committed, the batch is retried with
  backoff until the database returns;
- any other database error: the batch is retried in halves, recursively, so the
  poison event is dead-lettered and the rest folded;
- a dead letter the broker does not take: retried with backoff; the offsets
  wait for it;
- the offset commit refused (a rebalance, the broker gone or restarted): logged;
  the batch is read again by the partition's next owner and folds nothing twice;
- asked to stop while waiting for either: the batch's offsets stay uncommitted.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from psycopg import AsyncConnection
from pydantic import ValidationError

from processor import deferred
from processor.copy_rows import copy_rows, json_text
from processor.deferred import FlushPolicy
from processor.metrics import (
    BATCH_SECONDS,
    CONSUMER_LAG,
    DEFERRED_SECONDS,
    EVENTS_DEAD,
    EVENTS_FOLDED,
)
from processor.projections import ProjectionRegistry
from schemas.events import CanonicalEvent, parse_event

log = structlog.get_logger("processor")


class ProcessorStopped(Exception):
    """Asked to stop while a batch waited for the database or the broker: its
    offsets stay uncommitted, so it is read again after the restart."""


@dataclass(frozen=True)
class DecodedRecord:
    record: ConsumerRecord[bytes, bytes]
    event: CanonicalEvent


@dataclass(frozen=True)
class DeadLetter:
    record: ConsumerRecord[bytes, bytes]
    reason: str


@dataclass(frozen=True)
class Polled:
    """One ``getmany``: its records, decoded, and those that did not decode."""

    records: list[ConsumerRecord[bytes, bytes]]
    decoded: list[DecodedRecord]
    dead: list[DeadLetter]


def dead_letter_payload(letter: DeadLetter) -> bytes:
    r = letter.record
    value = r.value or b""
    try:
        original: Any = orjson.loads(value)
    except orjson.JSONDecodeError:
        original = {"base64": base64.b64encode(value).decode()}
    return orjson.dumps(
        {
            "reason": letter.reason,
            "topic": r.topic,
            "partition": r.partition,
            "offset": r.offset,
            "key": r.key.decode(errors="replace") if r.key else None,
            "payload": original,
        }
    )


_EVENT_COLUMNS = (
    "event_id", "type", "source", "projection", "entity", "occurred_at", "received_at", "payload",
)  # fmt: skip
_EVENT_TYPES = ("text", "text", "text", "text", "text", "timestamptz", "timestamptz", "jsonb")


class EventStore:
    """The ``events`` table: the idempotency guard and every projection's history.

    Projections named in ``deferred`` are not refreshed in the batch: their touched
    entities are marked (``processor/deferred.py``) and :meth:`flush` recomputes
    them later, once for many batches.
    """

    def __init__(self, registry: ProjectionRegistry, deferred: Iterable[str] = ()) -> None:
        self.registry = registry
        self.deferred = frozenset(deferred)
        for name in self.deferred:
            registry.get(name)  # KeyError now, not at the first batch

    async def fold(self, conn: AsyncConnection[Any], events: Sequence[CanonicalEvent]) -> int:
        """Store the events not seen before and refresh (or mark) what they touch;
        returns how many were new."""
        rows = []
        by_id: dict[str, CanonicalEvent] = {}
        # projection → entity → the batch's events for it (stored before or not)
        batch: dict[str, dict[str, list[CanonicalEvent]]] = defaultdict(lambda: defaultdict(list))
        for event in events:
            projection = self.registry.for_event(event)
            if projection is None or event.event_id in by_id:
                continue
            by_id[event.event_id] = event
            entity = projection.entity_of(event)
            batch[projection.name][entity].append(event)
            rows.append(
                (
                    event.event_id,
                    event.type,
                    event.source,
                    projection.name,
                    entity,
                    event.occurred_at,
                    event.received_at,
                    json_text(event.model_dump_json()),
                )
            )
        if not rows:
            return 0
        # projection → entity → the events this transaction stored for it
        fresh: dict[str, dict[str, list[CanonicalEvent]]] = defaultdict(lambda: defaultdict(list))
        async with conn.cursor() as cur:
            await cur.execute(
                "create temp table if not exists incoming (like events including defaults) "
                "on commit delete rows"
            )
            await copy_rows(cur, "incoming", _EVENT_COLUMNS, _EVENT_TYPES, rows)
            storing = asyncio.ensure_future(
                cur.execute(
                    "insert into events select * from incoming on conflict (event_id) do nothing "
                    "returning event_id, projection, entity"
                )
            )
            try:
                await asyncio.sleep(0)  # the statement is sent: PostgreSQL works from here
                self._anticipate(batch)  # meanwhile, what can be folded from memory
            finally:
                await storing
            inserted = await cur.fetchall()
            for event_id, name, entity in inserted:
                fresh[name][entity].append(by_id[event_id])
        for name, stored in fresh.items():
            if name in self.deferred:
                await deferred.mark(conn, name, stored)
            else:
                await self.registry.get(name).refresh(conn, sorted(stored), stored)
        return len(inserted)

    def _anticipate(self, batch: Mapping[str, Mapping[str, Sequence[CanonicalEvent]]]) -> None:
        for name, by_entity in batch.items():
            anticipate = getattr(self.registry.get(name), "anticipate", None)
            if anticipate is not None and name not in self.deferred:
                anticipate(by_entity)

    async def flush(self, conn: AsyncConnection[Any]) -> int:
        """Refresh every marked entity of the deferred projections; returns how many."""
        done = 0
        for name in sorted(self.deferred):
            entities = await deferred.take(conn, name)
            if entities:
                await self.registry.get(name).refresh(conn, entities)
                done += len(entities)
        return done

    def forget(self) -> None:
        """A transaction rolled back: drop what projections cached from it."""
        for projection in self.registry.projections:
            forget = getattr(projection, "forget", None)
            if forget is not None:
                forget()


class Processor:
    def __init__(
        self,
        *,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        dsn: str,
        registry: ProjectionRegistry,
        dlq_topic: str,
        batch_max: int = 20_000,
        poll_ms: int = 200,
        deferred: Iterable[str] = (),
        deferred_min_interval_s: float = 2.0,
        deferred_cost_ratio: float = 3.0,
    ) -> None:
        self.consumer = consumer
        self.producer = producer
        self.dsn = dsn
        self.store = EventStore(registry, deferred)
        self.dlq_topic = dlq_topic
        self.batch_max = batch_max
        self.poll_ms = poll_ms
        self._conn: AsyncConnection[Any] | None = None
        # The deferred refresh runs beside the batches, on its own connection.
        self._refresh_conn: AsyncConnection[Any] | None = None
        self._refreshing: asyncio.Task[None] | None = None
        self.batches = 0
        self.flushes = 0
        self._flush = FlushPolicy(deferred_min_interval_s, deferred_cost_ratio)

    async def run(self, stop: asyncio.Event) -> None:
        # One poll ahead: the next batch is fetched and decoded (CPU) while this one
        # waits for PostgreSQL. Offsets are committed per batch, explicitly, so the
        # prefetched batch is never committed before it is folded.
        polling = asyncio.create_task(self._poll())
        try:
            while not stop.is_set():
                polled = await polling
                polling = asyncio.create_task(self._poll())
                if polled.records:
                    await self.handle(polled, stop)
                    await self._commit(polled.records)
                    self.batches += 1
                lag = await self._report_lag()
                # Idle = caught up, not merely an empty poll (a fetch can be late).
                idle = not polled.records and lag == 0
                if self._refreshing is not None and self._refreshing.done():
                    # Raises what the refresh did not handle: the processor stops, as
                    # it did when refreshes ran inline.
                    finished, self._refreshing = self._refreshing, None
                    finished.result()
                if self.store.deferred and not self.refreshing and self._flush.due(idle=idle):
                    # In the background: the batches go on while it waits for PostgreSQL.
                    self._refreshing = asyncio.create_task(self._refresh_deferred())
        except ProcessorStopped:
            log.info("processor_stopped_mid_batch", detail="offsets not committed")
        finally:
            pending: list[asyncio.Task[Any]] = [polling]
            if self._refreshing is not None:
                pending.append(self._refreshing)  # cut short, it rolls back: marks stay
            for task in pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for conn in (self._conn, self._refresh_conn):
                if conn is not None:
                    await conn.close()

    @property
    def refreshing(self) -> bool:
        """A deferred refresh is running."""
        return self._refreshing is not None and not self._refreshing.done()

    async def _poll(self) -> Polled:
        batch = await self.consumer.getmany(timeout_ms=self.poll_ms, max_records=self.batch_max)
        records = [r for part in batch.values() for r in part]
        decoded, dead = decode(records)
        return Polled(records, decoded, dead)

    def deferred_status(self) -> dict[str, Any]:
        """How current the deferred projections are, as far as this processor knows."""
        return {
            "projections": sorted(self.store.deferred),
            "refreshes": self.flushes,
            "pending_here": self._flush.dirty,
            "running": self.refreshing,
            "seconds_since_refresh": round(self._flush.since_last(), 3),
            "interval_s": round(self._flush.interval, 3),
        }

    async def _refresh_deferred(self) -> None:
        """Recompute the marked entities of the deferred projections. A failure loses
        nothing (the marks roll back with it); it is retried after a backoff."""
        started = time.monotonic()
        self._flush.started()
        try:
            if self._refresh_conn is None or self._refresh_conn.closed:
                self._refresh_conn = await _connect(self.dsn)
            conn = self._refresh_conn
            with DEFERRED_SECONDS.time():
                async with conn.transaction():
                    refreshed = await self.store.flush(conn)
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError) and self._refresh_conn is not None:
                await self._refresh_conn.close()
                self._refresh_conn = None
            retry_in = self._flush.failed()
            log.error("deferred_refresh_failed", error=str(exc), retry_in_s=retry_in)
            return
        seconds = time.monotonic() - started
        self._flush.done(seconds)
        self.flushes += 1
        if refreshed:
            log.info(
                "deferred_refreshed",
                entities=refreshed,
                seconds=round(seconds, 3),
                next_in_s=round(self._flush.interval, 3),
            )

    async def _commit(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        offsets: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            offsets[tp] = max(offsets.get(tp, 0), r.offset + 1)
        assigned = self.consumer.assignment()
        mine = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        try:
            if mine:
                await self.consumer.commit(mine)
            if len(mine) < len(offsets):
                raise CommitFailedError("partitions moved to another member before the commit")
        except KafkaError as exc:
            # A rebalance moved the partitions (CommitFailedError) or the broker is
            # gone. The batch is in the database already; whoever owns the
            # partitions next reads it again and, by event id, folds nothing twice.
            log.warning(
                "offset_commit_failed",
                error=repr(exc),
                partitions=sorted({f"{r.topic}:{r.partition}" for r in records}),
                last_offset=max(r.offset for r in records),
            )

    async def _report_lag(self) -> int:
        """Records behind the high watermark, summed over the assigned partitions
        (also exported per partition)."""
        total = 0
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is None:
                continue
            position = await self.consumer.position(tp)
            lag = max(high - position, 0)
            CONSUMER_LAG.labels(topic=tp.topic, partition=str(tp.partition)).set(lag)
            total += lag
        return total

    async def handle(self, polled: Polled, stop: asyncio.Event) -> None:
        decoded, dead = polled.decoded, list(polled.dead)
        with BATCH_SECONDS.time():
            dead.extend(await self._fold_with_retry([d.event for d in decoded], decoded, stop))
        for letter in dead:
            log.warning(
                "dead_lettered",
                topic=letter.record.topic,
                partition=letter.record.partition,
                offset=letter.record.offset,
                reason=letter.reason,
            )
            await self._send_dead_letter(letter, stop)
            EVENTS_DEAD.inc()
        EVENTS_FOLDED.inc(len(decoded))

    async def _send_dead_letter(self, letter: DeadLetter, stop: asyncio.Event) -> None:
        """Until the broker takes it: the batch's offsets wait for its dead letters."""
        delay = 0.1
        while True:
            try:
                await self.producer.send_and_wait(
                    self.dlq_topic, dead_letter_payload(letter), key=letter.record.key
                )
                return
            except KafkaError as exc:
                if stop.is_set():
                    raise ProcessorStopped from exc
                log.warning(
                    "dead_letter_send_failed",
                    topic=letter.record.topic,
                    partition=letter.record.partition,
                    offset=letter.record.offset,
                    error=repr(exc),
                    retry_in_s=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _connection(self) -> AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = await _connect(self.dsn)
        return self._conn

    async def _fold_once(self, events: Sequence[CanonicalEvent]) -> None:
        conn = await self._connection()
        try:
            async with conn.transaction():
                await self.store.fold(conn, events)
        except BaseException:
            self.store.forget()
            raise
        if self.store.deferred:
            self._flush.marked()

    async def _fold_with_retry(
        self,
        events: list[CanonicalEvent],
        decoded: list[DecodedRecord],
        stop: asyncio.Event,
    ) -> list[DeadLetter]:
        delay = 0.1
        failure: str | None = None  # the whole batch failed with this: isolating
        while True:
            try:
                if failure is not None:
                    return await self._fold_isolating(decoded, failure)
                await self._fold_once(events)
                return []
            except psycopg.OperationalError as exc:
                # Also while isolating: a database outage is never a poison event.
                if stop.is_set():
                    raise ProcessorStopped from exc
                log.warning("database_unavailable", error=str(exc), retry_in_s=delay)
                if self._conn is not None:
                    await self._conn.close()
                    self._conn = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except psycopg.Error as exc:
                log.error("batch_failed_isolating", error=str(exc), events=len(events))
                failure = str(exc)

    async def _fold_isolating(
        self, decoded: list[DecodedRecord], reason: str | None = None
    ) -> list[DeadLetter]:
        """Fold in halves, recursively, until each failing part is one event: a poison
        event costs ~2·log2(batch) transactions, not one per event of the batch.
        ``reason``: the whole of ``decoded`` is known to fail with it (not retried)."""
        if not decoded:
            return []
        if reason is None:
            try:
                await self._fold_once([item.event for item in decoded])
                return []
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:
                reason = str(exc)
        if len(decoded) == 1:
            return [DeadLetter(decoded[0].record, f"fold failed: {reason}")]
        middle = len(decoded) // 2
        return [
            *await self._fold_isolating(decoded[:middle]),
            *await self._fold_isolating(decoded[middle:]),
        ]


async def _connect(dsn: str) -> AsyncConnection[Any]:
    return await AsyncConnection.connect(
        dsn, connect_timeout=10, keepalives_idle=30, keepalives_interval=10
    )


def tune_gc(young: int = 200_000) -> None:
    """Fewer cyclic-GC passes: the processor allocates hundreds of thousands of small
    objects per second (events, rows) and keeps a large cache; with the default
    threshold (700) every young collection also walks what survived, which cost up
    to a third of its time (docs/adr/0003). Objects alive at start are frozen out
    of every collection."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, old)


def decode(
    records: Sequence[ConsumerRecord[bytes, bytes]],
) -> tuple[list[DecodedRecord], list[DeadLetter]]:
    decoded: list[DecodedRecord] = []
    dead: list[DeadLetter] = []
    for record in records:
        try:
            decoded.append(DecodedRecord(record, parse_event(record.value or b"")))
        except orjson.JSONDecodeError as exc:
            dead.append(DeadLetter(record, f"not JSON: {exc}"))
        except ValidationError as exc:
            dead.append(DeadLetter(record, f"not a canonical event: {_short(exc)}"))
    return decoded, dead


def _short(exc: ValidationError) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]]
    return "; ".join(parts)
