"""A :class:`~collectors.publisher.Publisher` that answers 2xx only for durable deliveries,
whether or not the broker is there.

Two paths, one rule (``publish`` returns only once the delivery is durable):

- **direct** — the broker is connected and nothing waits in the spool: the
  records go to Kafka and ``publish`` waits at most ``publish_timeout`` for
  the acknowledgements (acks=all). With ``keep_until_folded`` the delivery is
  then also written to the spool as *unconfirmed* (one fsync) until the
  processor's consumer group has committed past its events.
- **spool** — the broker is down, slow, or lost what it had: the delivery is
  appended to the spool as *pending* (fsync'd) and the drainer publishes it
  later. Once anything is pending, every new delivery queues behind it, so the
  spool drains in the order deliveries were accepted.

If the spool cannot be written, ``publish`` raises
:class:`~collectors.exceptions.NotDurable` (503): the sender retries.

The drainer (one task) connects, drains, watches:

- connect: the broker answers TCP, its topics are listed and recreated when
  missing (a memory-only broker forgets them on restart), a fresh producer;
- drain: pending deliveries, oldest first, in batches; each batch is marked
  published only after every record of it was acknowledged;
- watch, every ``probe_interval``: a topic vanished, or the consumer group's
  committed offsets went backwards → the broker lost data: everything
  unconfirmed is requeued and published again (stable event ids make the
  copies harmless). Otherwise unconfirmed deliveries the group has committed
  past are trimmed.

At start-up every unconfirmed delivery is requeued as well: a collector that
was down cannot know what the broker kept meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson
import structlog
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Gauge

from collectors.exceptions import NotDurable
from collectors.publisher import RawDelivery, event_record
from collectors.spool import Ack, Spool, SpoolCounts, SpooledDelivery, SpooledRecord, SpoolError
from schemas.events import CanonicalEvent
from schemas.topics import Topics

log = structlog.get_logger("collectors.spool")

_T = TypeVar("_T")

SPOOL_DEPTH = Gauge(
    "flowmetrics_spool_depth", "Accepted deliveries waiting in the local spool for Kafka"
)
SPOOL_UNCONFIRMED = Gauge(
    "flowmetrics_spool_unconfirmed",
    "Deliveries in Kafka, kept in the spool until the processor commits past them",
)
BROKER_CONNECTED = Gauge(
    "flowmetrics_spool_broker_connected", "1 when deliveries go straight to Kafka"
)
SPOOLED = Counter("flowmetrics_spool_appended_total", "Deliveries accepted into the spool")
DRAINED = Counter("flowmetrics_spool_drained_total", "Spooled deliveries published to Kafka")
REQUEUED = Counter(
    "flowmetrics_spool_requeued_total",
    "Unconfirmed deliveries published again after the broker lost data or a restart",
)
SPOOL_FAILURES = Counter(
    "flowmetrics_spool_write_failures_total", "Spool writes that failed (answered 503)"
)


class BrokerLost(Exception):
    """The broker forgot topics or committed offsets: what it acknowledged may be gone."""


class BrokerWatch:
    """The admin questions the drainer asks: are our topics there, where is the group."""

    def __init__(self, bootstrap: str, topics: Topics, group: str) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.group = group
        self._admin: AIOKafkaAdminClient | None = None

    async def reachable(self, timeout: float = 1.0) -> bool:
        """A bare TCP connect first: aiokafka logs an error for every refused connection."""
        for host_port in self.bootstrap.split(","):
            host, _, port = host_port.strip().rpartition(":")
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(host or "localhost", int(port)), timeout
                )
            except (OSError, TimeoutError, ValueError):
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True
        return False

    async def missing_topics(self) -> set[str]:
        present = set(await (await self._client()).list_topics())
        return set(self.topics.all()) - present

    async def committed(self) -> dict[int, int]:
        """The group's committed offset (next to consume) per events partition.

        Ask only once the topic exists: describing a missing topic makes some
        brokers (Tansu) create it with their default partition count.
        """
        admin = await self._client()
        described = await admin.describe_topics([self.topics.events])
        partitions = [
            TopicPartition(self.topics.events, p["partition"])
            for topic in described
            for p in topic.get("partitions", ())
        ]
        if not partitions:
            return {}
        # Tansu answers an OffsetFetch without partitions with a malformed response.
        offsets = await admin.list_consumer_group_offsets(self.group, partitions=partitions)
        return {
            tp.partition: meta.offset
            for tp, meta in offsets.items()
            if tp.topic == self.topics.events and meta.offset >= 0
        }

    async def close(self) -> None:
        if self._admin is not None:
            admin, self._admin = self._admin, None
            with contextlib.suppress(Exception):
                await admin.close()

    async def _client(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
            await admin.start()
            self._admin = admin
        return self._admin


class DurablePublisher:
    def __init__(
        self,
        *,
        spool_path: Path,
        topics: Topics,
        producer_factory: Callable[[], AIOKafkaProducer],
        ensure_topics: Callable[[], Awaitable[None]],
        watch: BrokerWatch,
        publish_timeout: float = 2.0,
        probe_interval: float = 1.0,
        keep_until_folded: bool = True,
        drain_batch: int = 500,
        max_backoff: float = 5.0,
    ) -> None:
        self.spool_path = spool_path
        self.topics = topics
        self.producer_factory = producer_factory
        self.ensure_topics = ensure_topics
        self.watch = watch
        self.publish_timeout = publish_timeout
        self.probe_interval = probe_interval
        self.keep_until_folded = keep_until_folded
        self.drain_batch = drain_batch
        self.max_backoff = max_backoff

        self._executor = ThreadPoolExecutor(1, thread_name_prefix="spool")
        self._spool: Spool | None = None
        self._spool_error: str | None = None
        self._producer: AIOKafkaProducer | None = None
        self._direct = False  # deliveries may go straight to Kafka
        self._connected = False  # the drainer's view of the broker
        self._lost = True  # requeue unconfirmed deliveries at the next connect
        self._reserved = 0  # spool appends under way (they must drain before going direct)
        self._committed_seen: dict[int, int] = {}
        self._epoch = 0  # bumped whenever unconfirmed deliveries are requeued
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        try:
            self._spool = await self._call(Spool, self.spool_path, self.topics.prefix)
        except SpoolError as exc:
            # Still serve: deliveries go to Kafka while it answers; the rest get 503.
            self._spool_error = str(exc)
            log.error("spool_unavailable", path=str(self.spool_path), error=str(exc))
        self._report()
        # With the broker up, serve from the first request in direct mode (what was
        # left in the spool drains first); otherwise the drainer keeps trying.
        try:
            async with asyncio.timeout(max(self.publish_timeout, 5.0)):
                await self._connect()
                await self._drain()
        except Exception as exc:
            self._broker_failed("broker unavailable at start", exc)
        self._task = asyncio.create_task(self._drainer(), name="spool-drainer")

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        task = self._task
        while task is not None and not task.done():
            # Again until it ends: on 3.11 a wait_for finishing at the same moment
            # can swallow one cancellation.
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        self._retire_producer()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        await self.watch.close()
        if self._spool is not None:
            await self._call(self._spool.close)
        self._executor.shutdown(wait=True)

    # -- the Publisher protocol -------------------------------------------------

    async def publish(self, raw: RawDelivery | None, events: Sequence[CanonicalEvent]) -> None:
        records: list[SpooledRecord] = []
        if raw is not None:
            records.append(SpooledRecord("raw", raw.delivery_id.encode(), raw.to_json()))
        for event in events:
            key, value = event_record(event)
            records.append(SpooledRecord("events", key, value))
        if records:
            await self._accept(records, raw.delivery_id if raw else None)

    async def dead_letter(self, raw: RawDelivery, reason: str) -> None:
        value = orjson.dumps({"reason": reason, "raw": orjson.Fragment(raw.to_json())})
        await self._accept([SpooledRecord("dlq", raw.delivery_id.encode(), value)],
                           raw.delivery_id)  # fmt: skip

    async def readiness(self) -> dict[str, Any]:
        counts = self.counts
        spool_ok = self._spool is not None and self._spool_error is None
        return {
            "ready": spool_ok or (self._direct and not self.keep_until_folded),
            "broker": "connected" if self._connected else "unreachable",
            "mode": "direct" if self._direct else "spool",
            "spool_depth": counts.pending,
            "spool_unconfirmed": counts.unconfirmed,
            **({"spool_error": self._spool_error} if self._spool_error else {}),
        }

    @property
    def counts(self) -> SpoolCounts:
        return self._spool.counts if self._spool is not None else SpoolCounts(0, 0)

    # -- accepting ----------------------------------------------------------------

    async def _accept(self, records: list[SpooledRecord], delivery_id: str | None) -> None:
        producer, epoch = self._producer, self._epoch
        if self._direct and producer is not None:
            try:
                acks = await self._send(producer, records, self.publish_timeout)
            except (KafkaError, TimeoutError) as exc:
                self._broker_failed("direct publish failed", exc)
            else:
                if not (self.keep_until_folded and acks):
                    return
                if epoch == self._epoch:
                    await self._append(records, acks, delivery_id)
                    return
                # The broker was found to have lost data while this was acknowledged:
                # the ack may be worthless, so it queues like any other delivery.
        self._reserved += 1
        try:
            await self._append(records, None, delivery_id)
        finally:
            self._reserved -= 1
        SPOOLED.inc()
        self._wake.set()

    async def _append(
        self, records: list[SpooledRecord], acks: list[Ack] | None, delivery_id: str | None
    ) -> None:
        spool = self._spool
        try:
            if spool is None:
                raise SpoolError(self._spool_error or "the spool is not open")
            await self._call(spool.append, records, acks=acks)
        except SpoolError as exc:
            SPOOL_FAILURES.inc()
            self._spool_error = str(exc)
            log.error("spool_write_failed", delivery_id=delivery_id, error=str(exc))
            raise NotDurable(f"the delivery could not be made durable: {exc}") from exc
        if self._spool_error and self._spool is not None:
            self._spool_error = None
        self._report()

    async def _send(
        self, producer: AIOKafkaProducer, records: Sequence[SpooledRecord], timeout: float
    ) -> list[Ack]:
        """Send in order; return the events records' (partition, offset) once all are acked."""
        deadline = time.monotonic() + timeout
        futures: list[asyncio.Future[Any]] = []
        roles: list[str] = []

        async def enqueue() -> None:
            for record in records:
                topic = getattr(self.topics, record.role)
                futures.append(await producer.send(topic, record.value, key=record.key))
                roles.append(record.role)

        try:
            async with asyncio.timeout(timeout):
                await enqueue()
        except BaseException:
            _abandon(futures)
            raise
        remaining = max(deadline - time.monotonic(), 0.001)
        _, pending = await asyncio.wait(futures, timeout=remaining)
        if pending:
            _abandon(futures)
            raise TimeoutError(f"the broker did not acknowledge within {timeout:.1f}s")
        acks: list[Ack] = []
        for role, future in zip(roles, futures, strict=True):
            metadata = future.result()  # raises the KafkaError of a failed send
            if role == "events":
                acks.append((metadata.partition, metadata.offset))
        return acks

    # -- the drainer --------------------------------------------------------------

    async def _drainer(self) -> None:
        delay = 0.1
        while not self._stopping:
            try:
                if not self._connected:
                    await self._connect()
                await self._drain()
                await self._watch()
                delay = 0.1
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.probe_interval):
                        await self._wake.wait()
                self._wake.clear()
            except asyncio.CancelledError:
                raise
            except BrokerLost as exc:
                self._lost = True
                self._broker_failed("broker lost data", exc)
            except SpoolError as exc:
                self._spool_error = str(exc)
                log.error("spool_drain_failed", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
            except Exception as exc:  # KafkaError, OSError, BrokerUnavailable, timeouts
                self._broker_failed("broker unavailable", exc, retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)

    async def _connect(self) -> None:
        if not await self.watch.reachable():
            raise ConnectionError(f"nothing answers at {self.watch.bootstrap}")
        if await self.watch.missing_topics():
            self._lost = True
        await self.ensure_topics()
        committed = await self.watch.committed()
        if _went_back(self._committed_seen, committed):
            self._lost = True
        self._retire_producer()
        producer = self.producer_factory()
        await producer.start()
        self._producer = producer
        self._committed_seen = committed
        if self._lost and self._spool is not None:
            self._epoch += 1
            requeued = await self._call(self._spool.requeue_unconfirmed)
            if requeued:
                REQUEUED.inc(requeued)
                log.warning("spool_requeued_unconfirmed", deliveries=requeued)
        self._lost = False
        self._connected = True
        self._report()
        log.info("broker_connected", bootstrap=self.watch.bootstrap, **self._depths())

    async def _drain(self) -> None:
        producer, spool = self._producer, self._spool
        if producer is None or spool is None:
            return
        while not self._stopping:
            batch: list[SpooledDelivery] = await self._call(spool.pending, self.drain_batch)
            if not batch:
                break
            records = [r for d in batch for r in d.records]
            acks = await self._send(producer, records, max(self.publish_timeout, 10.0))
            published: dict[int, list[Ack]] = {}
            position = 0
            for delivery in batch:
                n_events = sum(r.role == "events" for r in delivery.records)
                mine = acks[position : position + n_events]
                position += n_events
                published[delivery.seq] = mine if self.keep_until_folded else []
            await self._call(spool.mark_published, published)
            DRAINED.inc(len(batch))
            self._report()
            log.info("spool_drained", deliveries=len(batch), **self._depths())
        if self._reserved == 0 and spool.counts.pending == 0 and not self._direct:
            self._direct = True
            self._report()
            log.info("publishing_direct", **self._depths())

    async def _watch(self) -> None:
        missing = await self.watch.missing_topics()
        if missing:
            raise BrokerLost(f"topics vanished: {sorted(missing)}")
        committed = await self.watch.committed()
        if _went_back(self._committed_seen, committed):
            raise BrokerLost(f"committed offsets went back: {self._committed_seen} -> {committed}")
        self._committed_seen = committed
        spool = self._spool
        if spool is not None and self.counts.unconfirmed:
            await self._call(spool.trim_confirmed, committed)
            self._report()

    def _broker_failed(self, what: str, exc: BaseException, **extra: Any) -> None:
        if self._connected or self._direct:
            log.warning(what.replace(" ", "_"), error=repr(exc), **extra, **self._depths())
        self._direct = False
        self._connected = False
        # Retired now, not at the reconnect: its retries must not reach a restarted
        # broker before the topics are recreated there.
        self._retire_producer()
        self._report()
        self._wake.set()

    def _retire_producer(self) -> asyncio.Task[None] | None:
        """Stop the old producer in the background; sends of it still in flight may land
        later (copies of spooled deliveries: harmless)."""
        producer, self._producer = self._producer, None
        if producer is None:
            return None
        task = asyncio.create_task(_stop_quietly(producer))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        return task

    # -- helpers ------------------------------------------------------------------

    async def _call(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def _depths(self) -> dict[str, int]:
        counts = self.counts
        return {"spool_depth": counts.pending, "spool_unconfirmed": counts.unconfirmed}

    def _report(self) -> None:
        counts = self.counts
        SPOOL_DEPTH.set(counts.pending)
        SPOOL_UNCONFIRMED.set(counts.unconfirmed)
        BROKER_CONNECTED.set(1 if self._direct else 0)


def _went_back(before: dict[int, int], now: dict[int, int]) -> bool:
    """Committed offsets only grow; lower or gone means the broker forgot them."""
    return any(now.get(partition, -1) < offset for partition, offset in before.items())


def _abandon(futures: Sequence[asyncio.Future[Any]]) -> None:
    """Sends we no longer wait for: retrieve their outcome so nothing logs it as lost."""
    for future in futures:
        future.add_done_callback(lambda f: f.cancelled() or f.exception())


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), 15)
    except Exception as exc:  # stopping a producer whose broker is gone
        log.debug("producer_stop_failed", error=repr(exc))
