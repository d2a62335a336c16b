"""Read a whole topic once, from its beginning to where it ended when the read began.

Used by the operator commands (``replay`` over the raw topic, ``dlq list|redrive``
over the dead-letter topic); no consumer group, nothing committed.

Where a topic ends is ``max(ListOffsets(latest), the first fetch's high
watermark)``: Tansu 0.6 answers ListOffsets with the base offset of the last
batch + 1, below the real end when that batch held several records.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition


class TopicReadError(Exception):
    """The topic could not be read to its end."""


async def read_topic(
    bootstrap: str, topic: str, *, batch: int = 5000, stall_timeout: float = 30.0
) -> AsyncIterator[list[ConsumerRecord[bytes, bytes]]]:
    """Batches of records, in offset order within each partition."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    try:
        # All topics' metadata, not this one's: asking for a missing topic by name
        # makes some brokers (Tansu) create it.
        if topic not in await consumer.topics():
            return
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            return
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = dict(await consumer.end_offsets(tps))
        remaining = {tp for tp in tps if ends[tp] > 0}
        widened: set[TopicPartition] = set()
        last_progress = time.monotonic()
        while remaining:
            got = await consumer.getmany(*remaining, timeout_ms=500, max_records=batch)
            records = [r for tp in sorted(got, key=lambda t: t.partition) for r in got[tp]]
            for tp in list(remaining):
                high = consumer.highwater(tp)
                if tp not in widened and high is not None and tp in got:
                    ends[tp] = max(ends[tp], high)  # once: a live topic keeps growing
                    widened.add(tp)
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
            if records:
                last_progress = time.monotonic()
                yield [r for r in records if r.offset < ends[TopicPartition(r.topic, r.partition)]]
            elif time.monotonic() - last_progress > stall_timeout:
                raise TopicReadError(
                    f"{topic}: no progress for {stall_timeout:.0f}s; still to read: "
                    + ", ".join(f"{tp.partition}@{ends[tp]}" for tp in sorted(remaining))
                )
    finally:
        await consumer.stop()
