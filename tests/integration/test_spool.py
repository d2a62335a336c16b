"""The spool against a real broker and a real kill: accepted while the broker is away,
drained in order when it comes, and nothing acknowledged lost to a SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from collectors.durable_publisher import BrokerWatch, DurablePublisher
from collectors.publisher import RawDelivery
from collectors.spool import Spool
from infra.embedded import EmbeddedBroker, free_port
from infra.kafka import ensure_topics, make_producer
from schemas.events import WorkItemDeleted
from schemas.topics import Topics
from tests.pipeline import wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def delivery(n: int) -> tuple[RawDelivery, list[WorkItemDeleted]]:
    at = datetime(2024, 1, 1, tzinfo=UTC)
    raw = RawDelivery("jira", f"d-{n:04d}", at, "jira:issue_deleted", b'{"n":%d}' % n)
    event = WorkItemDeleted(event_id=f"e-{n}", source="jira", occurred_at=at, received_at=at,
                            key=f"jira:{n}", item_id=f"jira:{n}")  # fmt: skip
    return raw, [event]


@pytest.fixture
def broker_port() -> Iterator[int]:
    yield free_port()


def publisher_for(bootstrap: str, topics: Topics, spool: Path) -> DurablePublisher:
    async def create() -> None:
        # One partition each, so the topic's order is the drain order.
        await ensure_topics(bootstrap, topics.all(), partitions=1, attempts=1)

    return DurablePublisher(
        spool_path=spool,
        topics=topics,
        producer_factory=lambda: make_producer(bootstrap, idempotent=False),
        ensure_topics=create,
        watch=BrokerWatch(bootstrap, topics, "no-processor"),
        publish_timeout=1.0,
        probe_interval=0.2,
        max_backoff=0.5,
    )


async def read_values(bootstrap: str, topic: str, expected: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)  # fmt: skip
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        values: list[bytes] = []
        deadline = time.monotonic() + 20
        while len(values) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            values += [r.value or b"" for records in batch.values() for r in records]
        return values
    finally:
        await consumer.stop()


async def test_accepted_while_broker_absent_drains_in_order_after_restart(
    tmp_path: Path, broker_port: int
) -> None:
    """No broker at start, a collector restart in between: every delivery reaches Kafka,
    in the order accepted, once the broker comes."""
    topics = Topics("spool")
    bootstrap = f"127.0.0.1:{broker_port}"
    first = publisher_for(bootstrap, topics, tmp_path / "spool.db")
    await first.start()
    for n in range(40):
        await first.publish(*delivery(n))
    assert (await first.readiness())["spool_depth"] == 40
    await first.stop()  # the collector restarts while the broker is still away

    second = publisher_for(bootstrap, topics, tmp_path / "spool.db")
    await second.start()
    try:
        for n in range(40, 60):
            await second.publish(*delivery(n))
        assert (await second.readiness())["spool_depth"] == 60
        with EmbeddedBroker(tmp_path, broker_port):
            await wait_for(lambda: _drained(second), timeout=30, what="the spool to drain")
            for n in range(60, 70):  # straight to Kafka now
                await second.publish(*delivery(n))
            raw = await read_values(bootstrap, topics.raw, 70)
            events = await read_values(bootstrap, topics.events, 70)
    finally:
        await second.stop()
    assert raw == [delivery(n)[0].to_json() for n in range(70)]
    assert len(events) == 70
    print(
        "\nspool: 60 deliveries accepted without a broker across a collector restart, "
        "70 in Kafka in acceptance order, loss = 0"
    )


async def _drained(publisher: DurablePublisher) -> bool:
    state = await publisher.readiness()
    return state["spool_depth"] == 0 and state["mode"] == "direct"


WRITER = textwrap.dedent(
    """
    import sys
    from collectors.spool import Spool, SpooledRecord
    spool = Spool(sys.argv[1])
    n = 0
    while True:
        n += 1
        seq = spool.append([SpooledRecord("raw", b"k", b"x" * 2000)])
        print(seq, flush=True)
    """
)


@pytest.mark.parametrize("kill_after", [0.3, 0.8])
def test_sigkill_loses_no_acknowledged_append(tmp_path: Path, kill_after: float) -> None:
    """Every append the spool returned from is still there after the writer is SIGKILLed."""
    path = tmp_path / "spool.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=REPO,
                              stdout=subprocess.PIPE, env=env)  # fmt: skip
    time.sleep(kill_after)
    writer.send_signal(signal.SIGKILL)
    out, _ = writer.communicate()
    acknowledged = [int(line) for line in out.decode().split()]
    assert acknowledged, "the writer appended nothing before the kill"
    with Spool(path) as spool:
        kept = [d.seq for d in spool.pending(len(acknowledged) + 10)]
    assert kept[: len(acknowledged)] == acknowledged
    assert len(kept) - len(acknowledged) <= 1  # at most the append the kill interrupted
    print(f"\nspool: {len(acknowledged)} acknowledged appends, SIGKILL, {len(kept)} kept")


def test_processes_cannot_share_a_spool(tmp_path: Path) -> None:
    """A second collector on the same spool fails at start instead of interleaving."""
    path = tmp_path / "spool.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys,time\nfrom collectors.spool import Spool\n"
         "s = Spool(sys.argv[1]); print('open', flush=True); time.sleep(30)", str(path)],
        cwd=REPO, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"open"
        from collectors.spool import SpoolError

        with pytest.raises(SpoolError):
            Spool(path)
    finally:
        holder.kill()
        holder.wait()
