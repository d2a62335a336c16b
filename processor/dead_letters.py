"""The dead-letter topic, for operators: ``flowmetrics dlq list`` and ``dlq redrive``.

Two kinds of records land there, both authentic:

- **processor** dead letters (:func:`processor.consumer.dead_letter_payload`):
  an events-topic record that could not be decoded or folded, with the reason,
  its topic/partition/offset, its key and the original payload;
- **collector** dead letters (``Publisher.dead_letter``): a signed webhook the
  mapping code could not normalize, with the reason and the raw delivery.

A re-drive, after the fix is deployed, publishes again what the record stands
for: the original canonical event (validated by the current schema) to the
events topic, or, for a raw delivery, the raw record plus the canonical events
the current mapping makes of it. The records stay on the topic; stable event ids
make a second re-drive harmless. A record that still fails is reported and left.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from aiokafka import AIOKafkaProducer, ConsumerRecord
from pydantic import ValidationError

from collectors.github import GitHubMapping
from collectors.publisher import KafkaPublisher, RawDelivery
from processor.replay import UnmappableDelivery, normalize_raw, raw_from_json
from processor.stages import StageConfig
from processor.topic_reader import read_topic
from schemas.events import CanonicalEvent, parse_event
from schemas.topics import Topics

Origin = Literal["processor", "collector", "unknown"]


@dataclass(frozen=True)
class DeadLetterRecord:
    partition: int  # where the dead letter itself is, on the dead-letter topic
    offset: int
    origin: Origin
    reason: str
    topic: str | None  # where the original was (processor dead letters)
    source_partition: int | None
    source_offset: int | None
    key: str | None
    payload: Any  # a canonical event (dict), {"base64": ...}, or a raw delivery (dict)

    @property
    def position(self) -> str:
        return f"{self.partition}:{self.offset}"

    @property
    def identity(self) -> str:
        """The event id or the delivery id: what an operator searches logs for."""
        if isinstance(self.payload, dict):
            for name in ("event_id", "delivery_id"):
                if isinstance(self.payload.get(name), str):
                    return str(self.payload[name])
        return self.key or ""

    def summary(self) -> dict[str, Any]:
        return {
            "dlq": self.position,
            "origin": self.origin,
            "reason": self.reason,
            "topic": self.topic,
            "partition": self.source_partition,
            "offset": self.source_offset,
            "key": self.key,
            "id": self.identity,
        }


def parse_dead_letter(record: ConsumerRecord[bytes, bytes]) -> DeadLetterRecord:
    key = record.key.decode(errors="replace") if record.key else None
    try:
        data = orjson.loads(record.value or b"")
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raw_value = base64.b64encode(record.value or b"").decode()
        return DeadLetterRecord(record.partition, record.offset, "unknown",
                                "not a dead-letter record", None, None, None, key,
                                {"base64": raw_value})  # fmt: skip
    reason = str(data.get("reason", ""))
    if "raw" in data:
        return DeadLetterRecord(record.partition, record.offset, "collector", reason,
                                None, None, None, key, data["raw"])  # fmt: skip
    return DeadLetterRecord(
        record.partition, record.offset, "processor" if "payload" in data else "unknown",
        reason, data.get("topic"), data.get("partition"), data.get("offset"),
        data.get("key", key), data.get("payload"),
    )  # fmt: skip


async def list_dead_letters(bootstrap: str, topics: Topics) -> list[DeadLetterRecord]:
    letters: list[DeadLetterRecord] = []
    async for records in read_topic(bootstrap, topics.dlq):
        letters.extend(parse_dead_letter(r) for r in records)
    return sorted(letters, key=lambda d: (d.partition, d.offset))


def select(
    letters: Iterable[DeadLetterRecord],
    *,
    positions: Iterable[str] = (),
    reason_contains: str | None = None,
) -> list[DeadLetterRecord]:
    """By ``partition:offset`` on the dead-letter topic, and/or by words of the reason."""
    wanted = set(positions)
    return [
        d for d in letters
        if (not wanted or d.position in wanted)
        and (reason_contains is None or reason_contains.lower() in d.reason.lower())
    ]  # fmt: skip


# -- re-drive -----------------------------------------------------------------------

Parse = Callable[[Any], CanonicalEvent]
Normalize = Callable[[RawDelivery], tuple[tuple[CanonicalEvent, ...], str | None]]


@dataclass(frozen=True)
class RedriveOutcome:
    letter: DeadLetterRecord
    status: Literal["redriven", "still_failing"]
    detail: str
    events: int = 0

    def summary(self) -> dict[str, Any]:
        return {"dlq": self.letter.position, "id": self.letter.identity,
                "status": self.status, "events": self.events, "detail": self.detail}  # fmt: skip


class StillFailing(Exception):
    """The current code still cannot make events of this dead letter."""


def repair(
    letter: DeadLetterRecord, *, parse: Parse, normalize: Normalize
) -> tuple[RawDelivery | None, tuple[CanonicalEvent, ...], str | None]:
    """What a dead letter becomes under the current code: (raw, events, why none)."""
    if letter.origin == "collector":
        try:
            raw = raw_from_json(orjson.dumps(letter.payload))
            events, ignored = normalize(raw)
        except UnmappableDelivery as exc:
            raise StillFailing(str(exc)) from exc
        return raw, events, ignored
    if letter.origin == "processor" and isinstance(letter.payload, dict):
        if set(letter.payload) == {"base64"}:
            raise StillFailing("the original record was not JSON; nothing to re-drive")
        try:
            return None, (parse(letter.payload),), None
        except (ValidationError, ValueError, TypeError) as exc:
            raise StillFailing(f"still not a canonical event: {exc}") from exc
    raise StillFailing("not a dead letter this version knows how to re-drive")


async def redrive(
    letters: Iterable[DeadLetterRecord],
    *,
    producer: AIOKafkaProducer,
    topics: Topics,
    stages: StageConfig,
    mapping: GitHubMapping,
    parse: Parse = parse_event,
    normalize: Normalize | None = None,
    dry_run: bool = False,
) -> list[RedriveOutcome]:
    """Publish again what each dead letter stands for, with the code deployed now."""
    publisher = KafkaPublisher(producer, topics)
    renormalize = normalize or (lambda raw: normalize_raw(raw, stages, mapping))
    outcomes: list[RedriveOutcome] = []
    for letter in letters:
        try:
            raw, events, ignored = repair(letter, parse=parse, normalize=renormalize)
        except StillFailing as exc:
            outcomes.append(RedriveOutcome(letter, "still_failing", str(exc)))
            continue
        if not dry_run:
            await publisher.publish(raw, events)
        detail = ignored or ("would publish" if dry_run else "published")
        outcomes.append(RedriveOutcome(letter, "redriven", detail, len(events)))
    return outcomes
