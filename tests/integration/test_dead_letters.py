"""Poison events: dead-lettered with their reason and place, their partition not stalled;
listed and re-driven after a fix, from the processor and from the collector."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from aiokafka import AIOKafkaProducer

from collectors.github import GitHubMapping
from collectors.publisher import RawDelivery
from infra.kafka import make_producer
from processor.dead_letters import list_dead_letters, redrive, select
from processor.replay import normalize_raw
from processor.stages import load_stage_config
from schemas.events import WorkItemTransitioned, WorkItemUpserted, parse_event
from tests.fixtures import load_fixture
from tests.integration.faults import GroupOffsets
from tests.pipeline import Pipeline, wait_for

pytestmark = pytest.mark.integration

KEY = b"jira:777001"
AT = datetime(2024, 3, 1, 9, tzinfo=UTC)


def upsert(n: int) -> bytes:
    return WorkItemUpserted(
        event_id=f"dl-upsert-{n}", source="jira", occurred_at=AT, received_at=AT,
        key=KEY.decode(), item_id=KEY.decode(), display_key="DLQ-1", title=f"v{n}",
        created_at=AT,
    ).model_dump_json().encode()  # fmt: skip


def transition_missing_status() -> bytes:
    """A canonical event from a third-party producer that forgot ``to_status``."""
    event = WorkItemTransitioned(event_id="dl-bad-transition", source="acme", occurred_at=AT,
                                 received_at=AT, key=KEY.decode(), item_id=KEY.decode(),
                                 to_status="x").model_dump(mode="json")  # fmt: skip
    del event["to_status"]
    return orjson.dumps(event)


def stored(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        return {r[0] for r in conn.execute("select event_id from events")}


async def test_poison_events_are_dead_lettered_without_stalling_and_redriven(
    pipeline: Pipeline, db_dsn: str, tmp_path: Path
) -> None:
    """Not JSON and not a canonical event, between good events on one partition: the good
    ones fold, the bad ones are listed with reason/topic/partition/offset, and the one a
    fix can repair is re-driven and folded."""
    bootstrap, topics = pipeline.ends.kafka_bootstrap, pipeline.topics
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        sent = []
        for value in (upsert(1), b"\xff{not json", upsert(2), transition_missing_status(),
                      upsert(3)):  # fmt: skip
            sent.append(await producer.send_and_wait(topics.events, value, key=KEY))
    finally:
        await producer.stop()
    assert len({m.partition for m in sent}) == 1
    partition = sent[0].partition

    # A signed Jira delivery whose timestamp is a string: authentic, not mappable (422).
    body = load_fixture("jira/issue_created/cloud_TES-41_created.json")
    body["issue"]["id"], body["issue"]["key"] = "777002", "DLQ-2"
    body["timestamp"] = str(body["timestamp"])
    response = await pipeline.post_jira(body, delivery_id="dlq-webhook-1")
    assert response.status_code == 422

    await wait_for(lambda: _has(db_dsn, {"dl-upsert-1", "dl-upsert-2", "dl-upsert-3"}),
                   timeout=30, what="the good events folded")  # fmt: skip
    async with GroupOffsets(bootstrap, pipeline.settings.consumer_group, topics.events,
                            4) as group:  # fmt: skip

        async def committed_past_all() -> bool:
            return (await group.by_partition()).get(partition, 0) >= sent[-1].offset + 1

        await wait_for(committed_past_all, timeout=30, what="the partition committed")

    async def three_letters() -> bool:
        return len(await list_dead_letters(bootstrap, topics)) >= 3

    await wait_for(three_letters, timeout=30, what="three dead letters")
    letters = await list_dead_letters(bootstrap, topics)
    by_origin = {(d.origin, d.source_offset): d for d in letters}
    not_json = by_origin[("processor", sent[1].offset)]
    invalid = by_origin[("processor", sent[3].offset)]
    webhook = next(d for d in letters if d.origin == "collector")
    assert (not_json.topic, not_json.source_partition) == (topics.events, partition)
    assert not_json.reason.startswith("not JSON")
    assert invalid.reason.startswith("not a canonical event") and "to_status" in invalid.reason
    assert invalid.identity == "dl-bad-transition"
    assert "timestamp" in webhook.reason and webhook.identity == "dlq-webhook-1"

    # The fixes, as deployed code would have them: a default status for that producer's
    # transitions, and Jira timestamps accepted as numeric strings.
    def fixed_parse(payload: Any) -> Any:
        return parse_event({"to_status": "Unknown", **payload})

    stages, mapping = load_stage_config(None), GitHubMapping()

    def fixed_normalize(raw: RawDelivery) -> Any:
        data = orjson.loads(raw.body)
        data["timestamp"] = int(data["timestamp"])
        return normalize_raw(dataclasses.replace(raw, body=orjson.dumps(data)), stages, mapping)

    producer = make_producer(bootstrap, idempotent=False)
    await producer.start()
    try:
        before = await redrive(letters, producer=producer, topics=topics, stages=stages,
                               mapping=mapping)  # fmt: skip
        repairable = [*select(letters, reason_contains="canonical"), webhook]
        after = await redrive(repairable, producer=producer, topics=topics, stages=stages,
                              mapping=mapping, parse=fixed_parse,
                              normalize=fixed_normalize)  # fmt: skip
    finally:
        await producer.stop()
    assert [o.status for o in before] == ["still_failing"] * 3
    assert [o.status for o in after] == ["redriven", "redriven"]
    await wait_for(lambda: _has(db_dsn, {"dl-bad-transition"}), timeout=30,
                   what="the re-driven event folded")  # fmt: skip
    items = await pipeline.get("/api/v1/work-items", limit=50)
    assert {"DLQ-1", "DLQ-2"} <= {i["display_key"] for i in items["items"]}

    # The operator's view, through the command line.
    env = {**os.environ, "FLOW_ENV": "production", "FLOW_HOME": str(tmp_path),
           "FLOW_KAFKA_BOOTSTRAP": bootstrap, "FLOW_TOPIC_PREFIX": topics.prefix,
           "FLOW_KAFKA_IDEMPOTENT_PRODUCER": "0", "FLOW_LOG_LEVEL": "WARNING"}  # fmt: skip
    binary = str(Path(sys.executable).parent / "flowmetrics")
    listed = await asyncio.to_thread(subprocess.run, [binary, "dlq", "list", "--json"],
                                     env=env, capture_output=True, timeout=60)  # fmt: skip
    assert listed.returncode == 0, listed.stderr.decode()[-2000:]
    rows = [orjson.loads(line) for line in listed.stdout.splitlines()]
    assert {(r["origin"], r["offset"]) for r in rows} >= {
        ("processor", sent[1].offset),
        ("processor", sent[3].offset),
        ("collector", None),
    }
    assert all(r["reason"] for r in rows)
    dry = await asyncio.to_thread(subprocess.run, [binary, "dlq", "redrive", "--all",
                                                   "--dry-run"], env=env,
                                  capture_output=True, timeout=60)  # fmt: skip
    assert dry.returncode == 1  # the current code still cannot repair them: said, not hidden
    assert orjson.loads(dry.stdout.splitlines()[-1]) == {"redriven": 0, "still_failing": 3}
    print(f"\ndead letters: {len(letters)} listed (reasons: "
          f"{[d.reason[:40] for d in letters]}), 2 re-driven after the fix, "
          f"good events on the poisoned partition folded = 3 of 3")  # fmt: skip


async def _has(dsn: str, ids: set[str]) -> bool:
    return ids <= stored(dsn)
