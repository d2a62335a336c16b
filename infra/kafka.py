"""Kafka plumbing: producer/consumer/admin factories and topic creation.

aiokafka errors are translated into :class:`BrokerUnavailable` at this edge.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError


class BrokerError(Exception):
    """Base of this module's errors."""


class BrokerUnavailable(BrokerError):
    """The broker could not be reached or did not acknowledge in time."""


def make_producer(bootstrap: str, *, idempotent: bool = True, **kwargs: Any) -> AIOKafkaProducer:
    # acks=all + idempotence: an acknowledged write is on every in-sync replica
    # and a retried send is not duplicated in the log. Tansu (the embedded
    # broker) answers InitProducerId with UnknownError, so the embedded runtime
    # turns idempotence off; a duplicate from a producer retry is then still
    # harmless, because the processor folds by event_id.
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "acks": "all",
        "enable_idempotence": idempotent,
        "linger_ms": 5,
        "request_timeout_ms": 10_000,
        "compression_type": None,
    }
    options.update(kwargs)
    return AIOKafkaProducer(**options)


def make_consumer(bootstrap: str, group_id: str, *topics: str, **kwargs: Any) -> AIOKafkaConsumer:
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_partition_fetch_bytes": 8 * 1024 * 1024,
        "fetch_max_bytes": 64 * 1024 * 1024,
    }
    options.update(kwargs)
    return AIOKafkaConsumer(*topics, **options)


async def ensure_topics(
    bootstrap: str, names: Iterable[str], *, partitions: int = 4, attempts: int = 30
) -> None:
    """Create the topics that do not exist yet, retrying while the broker starts."""
    delay = 0.05
    for attempt in range(attempts):
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [n for n in names if n not in existing]
            if missing:
                try:
                    await admin.create_topics(
                        [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in missing]
                    )
                except TopicAlreadyExistsError:
                    pass
            return
        except KafkaError as exc:
            if attempt == attempts - 1:
                raise BrokerUnavailable(f"cannot create topics on {bootstrap}: {exc!r}") from exc
        finally:
            await admin.close()
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)
