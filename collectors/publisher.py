"""Where accepted deliveries go: the raw topic and the canonical topic.

``publish`` returns only after the broker acknowledged every record (acks=all),
so a 2xx answer means the delivery is durable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from collectors.exceptions import NotDurable
from schemas.events import CanonicalEvent
from schemas.topics import Topics


@dataclass(frozen=True)
class RawDelivery:
    """A source payload exactly as received, kept for replay after a mapping fix."""

    source: str
    delivery_id: str
    received_at: datetime
    event_name: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "source": self.source,
                "delivery_id": self.delivery_id,
                "received_at": self.received_at.isoformat(),
                "event_name": self.event_name,
                "headers": self.headers,
                "body": orjson.Fragment(self.body),
            }
        )


class Publisher(Protocol):
    async def publish(self, raw: RawDelivery | None, events: Sequence[CanonicalEvent]) -> None: ...

    async def dead_letter(self, raw: RawDelivery, reason: str) -> None: ...


def event_record(event: CanonicalEvent) -> tuple[bytes, bytes]:
    return event.key.encode(), orjson.dumps(event.model_dump(mode="json"))


class KafkaPublisher:
    def __init__(self, producer: AIOKafkaProducer, topics: Topics) -> None:
        self.producer = producer
        self.topics = topics

    async def publish(self, raw: RawDelivery | None, events: Sequence[CanonicalEvent]) -> None:
        futures: list[Any] = []
        try:
            if raw is not None:
                futures.append(
                    await self.producer.send(
                        self.topics.raw, raw.to_json(), key=raw.delivery_id.encode()
                    )
                )
            for event in events:
                key, value = event_record(event)
                futures.append(await self.producer.send(self.topics.events, value, key=key))
            await asyncio.gather(*futures)
        except KafkaError as exc:
            raise NotDurable(f"broker did not acknowledge: {exc!r}") from exc

    async def dead_letter(self, raw: RawDelivery, reason: str) -> None:
        value = orjson.dumps({"reason": reason, "raw": orjson.Fragment(raw.to_json())})
        try:
            await self.producer.send_and_wait(self.topics.dlq, value, key=raw.delivery_id.encode())
        except KafkaError as exc:
            raise NotDurable(f"broker did not acknowledge: {exc!r}") from exc
