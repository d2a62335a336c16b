"""The processor commits each batch's own offsets, only for partitions it still owns
(the next batch is already fetched when it commits: committing "everything consumed"
would commit that one before it is folded)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition

from processor.consumer import Processor
from processor.projections import ProjectionRegistry


class FakeConsumer:
    def __init__(self, assigned: set[TopicPartition]) -> None:
        self.assigned = assigned
        self.commits: list[dict[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    async def commit(self, offsets: dict[TopicPartition, int] | None = None) -> None:
        assert offsets is not None, "must never commit 'all consumed' offsets"
        self.commits.append(offsets)


def rec(partition: int, offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("events", partition, offset, 0, 0, None, b"{}", None, 0, 2, ())


def processor(consumer: FakeConsumer) -> Processor:
    return Processor(
        consumer=consumer,  # type: ignore[arg-type]
        producer=None,  # type: ignore[arg-type]
        dsn="postgresql://unused",
        registry=ProjectionRegistry([]),
        dlq_topic="dlq",
    )


def test_commits_the_next_offset_of_each_partition_in_the_batch() -> None:
    p0, p1 = TopicPartition("events", 0), TopicPartition("events", 1)
    consumer = FakeConsumer({p0, p1})
    batch = [rec(0, 5), rec(1, 9), rec(0, 7), rec(0, 6)]
    asyncio.run(processor(consumer)._commit(batch))
    assert consumer.commits == [{p0: 8, p1: 10}]


def test_a_partition_moved_away_is_not_committed(capsys: Any) -> None:
    p0 = TopicPartition("events", 0)
    consumer = FakeConsumer({p0})  # partition 1 went to another member meanwhile
    asyncio.run(processor(consumer)._commit([rec(0, 1), rec(1, 4)]))
    assert consumer.commits == [{p0: 2}]
    assert "offset_commit_failed" in capsys.readouterr().out
