"""The durable publisher against a fake broker: when it spools, how it drains, what it
answers when nothing can be made durable."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiokafka.errors import KafkaConnectionError

from collectors.durable_publisher import DurablePublisher
from collectors.exceptions import NotDurable
from collectors.publisher import RawDelivery
from schemas.events import WorkItemDeleted
from schemas.topics import Topics

TOPICS = Topics("unit")


@dataclass
class Metadata:
    partition: int
    offset: int


@dataclass
class FakeBroker:
    """Two partitions per topic, in memory; can be down, slow, or forget everything."""

    up: bool = True
    slow: bool = False
    topics: set[str] = field(default_factory=set)
    logs: dict[tuple[str, int], list[bytes]] = field(default_factory=lambda: defaultdict(list))
    committed: dict[int, int] = field(default_factory=dict)

    def lose_everything(self) -> None:
        self.topics.clear()
        self.logs.clear()
        self.committed.clear()

    def values(self, topic: str) -> list[bytes]:
        return [v for (t, _), log in sorted(self.logs.items()) if t == topic for v in log]

    def consume_all(self) -> None:
        """The processor caught up: the group commits every events partition's end."""
        for (topic, partition), log in self.logs.items():
            if topic == TOPICS.events:
                self.committed[partition] = len(log)


class FakeProducer:
    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker

    async def start(self) -> None:
        if not self.broker.up:
            raise KafkaConnectionError("down")

    async def stop(self) -> None:
        pass

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> Any:
        future: asyncio.Future[Metadata] = asyncio.get_running_loop().create_future()
        if not self.broker.up:
            future.set_exception(KafkaConnectionError("down"))
        elif not self.broker.slow:
            # raw on one partition, so its order is the acceptance order
            partition = key[-1] % 2 if key and topic == TOPICS.events else 0
            log = self.broker.logs[(topic, partition)]
            log.append(value)
            future.set_result(Metadata(partition, len(log) - 1))
        return future


class FakeWatch:
    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.bootstrap = "fake:9092"

    async def reachable(self) -> bool:
        return self.broker.up

    async def missing_topics(self) -> set[str]:
        self._check()
        return set(TOPICS.all()) - self.broker.topics

    async def committed(self) -> dict[int, int]:
        self._check()
        return dict(self.broker.committed)

    async def close(self) -> None:
        pass

    def _check(self) -> None:
        if not self.broker.up:
            raise KafkaConnectionError("down")


Factory = Callable[..., Awaitable[DurablePublisher]]


@pytest_asyncio.fixture
async def make(tmp_path: Path) -> AsyncIterator[Factory]:
    started: list[DurablePublisher] = []

    async def factory(
        broker: FakeBroker, path: Path | None = None, **options: Any
    ) -> DurablePublisher:
        async def ensure() -> None:
            FakeWatch(broker)._check()
            broker.topics |= set(TOPICS.all())

        publisher = DurablePublisher(
            spool_path=path or tmp_path / "spool.db",
            topics=TOPICS,
            producer_factory=lambda: FakeProducer(broker),  # type: ignore[arg-type,return-value]
            ensure_topics=ensure,
            watch=FakeWatch(broker),  # type: ignore[arg-type]
            publish_timeout=options.pop("publish_timeout", 0.2),
            probe_interval=0.02,
            max_backoff=0.05,
            **options,
        )
        await publisher.start()
        started.append(publisher)
        return publisher

    yield factory
    for publisher in started:
        await publisher.stop()


def raw(n: int) -> RawDelivery:
    return RawDelivery("jira", f"d{n}", datetime(2024, 1, 1, tzinfo=UTC), "jira:x", b'{"n":%d}' % n)


def event(n: int) -> WorkItemDeleted:
    at = datetime(2024, 1, 1, tzinfo=UTC)
    return WorkItemDeleted(event_id=f"e{n}", source="jira", occurred_at=at, received_at=at,
                           key=f"jira:{n}", item_id=f"jira:{n}")  # fmt: skip


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_connected_broker_gets_the_delivery_directly(make: Factory) -> None:
    """With the broker up, publish returns after its acks; nothing waits in the spool."""
    broker = FakeBroker()
    publisher = await make(broker)
    await until(lambda: publisher._direct)
    await publisher.publish(raw(1), [event(1)])
    assert len(broker.values(TOPICS.raw)) == 1 and len(broker.values(TOPICS.events)) == 1
    state = await publisher.readiness()
    assert state["mode"] == "direct" and state["spool_depth"] == 0
    assert state["spool_unconfirmed"] == 1  # kept until the processor commits past it
    broker.consume_all()
    await until(lambda: publisher.counts.unconfirmed == 0)


async def test_broker_down_spools_then_drains_in_acceptance_order(make: Factory) -> None:
    """Deliveries accepted while the broker is down reach it later, oldest first."""
    broker = FakeBroker(up=False)
    publisher = await make(broker)
    for n in range(20):
        await publisher.publish(raw(n), [event(n)])
    state = await publisher.readiness()
    assert state == {"ready": True, "broker": "unreachable", "mode": "spool",
                     "spool_depth": 20, "spool_unconfirmed": 0}  # fmt: skip
    broker.up = True
    for n in range(20, 30):  # arriving while the backlog drains: they queue behind it
        await publisher.publish(raw(n), [event(n)])
    await until(lambda: publisher._direct)
    assert broker.values(TOPICS.raw) == [raw(n).to_json() for n in range(30)]


async def test_slow_broker_falls_back_within_the_timeout(make: Factory) -> None:
    """A broker that does not acknowledge in time costs at most the timeout, then the spool."""
    broker = FakeBroker()
    publisher = await make(broker, publish_timeout=0.1)
    await until(lambda: publisher._direct)
    broker.slow = True
    started = time.monotonic()
    await publisher.publish(raw(1), [event(1)])
    assert time.monotonic() - started < 1.0
    assert publisher.counts.pending == 1  # spooled, not lost in the slow broker
    assert (await publisher.readiness())["mode"] == "spool"


async def test_broker_that_lost_its_data_gets_unconfirmed_deliveries_again(
    make: Factory,
) -> None:
    """A memory-only broker restart: acknowledged but unconsumed deliveries are republished."""
    broker = FakeBroker()
    publisher = await make(broker)
    await until(lambda: publisher._direct)
    for n in range(5):
        await publisher.publish(raw(n), [event(n)])
    broker.lose_everything()
    await until(lambda: len(broker.values(TOPICS.events)) == 5 and publisher._direct)
    assert sorted(broker.values(TOPICS.raw)) == sorted(raw(n).to_json() for n in range(5))


async def test_spool_survives_a_collector_restart(make: Factory, tmp_path: Path) -> None:
    """What one publisher spooled, the next one (same file) drains."""
    broker = FakeBroker(up=False)
    first = await make(broker, tmp_path / "shared.db")
    for n in range(3):
        await first.publish(raw(n), [event(n)])
    await first.stop()
    second = await make(broker, tmp_path / "shared.db")
    assert second.counts.pending == 3
    broker.up = True
    await until(lambda: second._direct)
    assert broker.values(TOPICS.raw) == [raw(n).to_json() for n in range(3)]


async def test_no_broker_and_no_spool_is_503(make: Factory, tmp_path: Path) -> None:
    """When neither Kafka nor the spool can take it, publish raises NotDurable (503)."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    publisher = await make(FakeBroker(up=False), blocker / "spool.db")
    with pytest.raises(NotDurable):
        await publisher.publish(raw(1), [event(1)])
    with pytest.raises(NotDurable):
        await publisher.dead_letter(raw(1), "unmappable")
    assert (await publisher.readiness())["ready"] is False
