"""A running flowmetrics for end-to-end tests: collectors, processor and API on
real ports, over the session's real broker and a fresh real database."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from collectors.signatures import sign
from infra.embedded import free_port
from infra.services import Endpoints, run_api, run_collectors, run_processor
from infra.settings import Settings
from processor import deferred
from schemas.topics import Topics

JIRA_SECRET = "jira-test-secret"
GITHUB_SECRET = "github-test-secret"
INGEST_TOKEN = "ingest-test-token"


async def wait_for(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 30.0, what: str = "condition"
) -> None:
    """Poll ``check`` with backoff until true; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        try:
            if await check():
                return
        except (httpx.HTTPError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.25)


async def wait_derived(dsn: str, *, timeout: float = 60.0) -> None:
    """Wait until no deferred projection (DORA) has an entity waiting for its refresh:
    with the offsets committed, every derived table then reflects the events."""

    async def current() -> bool:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            return await deferred.pending(conn) == 0

    await wait_for(current, timeout=timeout, what="the deferred projections to refresh")


@dataclass
class Pipeline:
    settings: Settings
    ends: Endpoints
    topics: Topics
    collector: httpx.AsyncClient
    api: httpx.AsyncClient
    delivery_seq: int = field(default=0)

    async def post_jira(
        self,
        body: bytes | dict[str, Any],
        *,
        delivery_id: str | None = None,
        secret: str | None = JIRA_SECRET,
    ) -> httpx.Response:
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        headers = {"content-type": "application/json"}
        if secret is not None:
            headers["x-hub-signature"] = sign(secret, raw)
        if delivery_id is not None:
            headers["x-atlassian-webhook-identifier"] = delivery_id
        return await self.collector.post("/webhooks/jira", content=raw, headers=headers)

    async def post_github(
        self,
        event: str,
        body: bytes | dict[str, Any],
        *,
        delivery_id: str | None = None,
        secret: str | None = GITHUB_SECRET,
    ) -> httpx.Response:
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        self.delivery_seq += 1
        headers = {
            "content-type": "application/json",
            "x-github-event": event,
            "x-github-delivery": delivery_id or f"d-{uuid.uuid4()}",
        }
        if secret is not None:
            headers["x-hub-signature-256"] = sign(secret, raw)
        return await self.collector.post("/webhooks/github", content=raw, headers=headers)

    async def settle(self, timeout: float = 30.0) -> None:
        """Wait until nothing waits in the collector's spool and the processor has
        committed every record on the events topic."""

        async def spool_drained() -> bool:
            state = (await self.collector.get("/ready")).json()
            return state.get("spool_depth", 0) == 0

        await wait_for(spool_drained, timeout=timeout, what="the collector's spool to drain")
        await wait_for_group_caught_up(
            self.ends.kafka_bootstrap,
            self.settings.consumer_group,
            self.topics.events,
            timeout=timeout,
        )
        await wait_derived(self.ends.database_url, timeout=timeout)

    async def get(self, path: str, **params: Any) -> Any:
        response = await self.api.get(
            path, params={k: v for k, v in params.items() if v is not None}
        )
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()


async def wait_for_group_caught_up(
    bootstrap: str, group: str, topic: str, *, timeout: float = 30.0
) -> None:
    """Caught up = the committed offset of every partition is its high watermark, as a
    fetch reports it: Tansu 0.6 answers ListOffsets(latest) below the real end after a
    produce request that carried several records."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        tps = await _partitions(bootstrap, topic)

        async def caught_up() -> bool:
            offsets = await admin.list_consumer_group_offsets(group, partitions=tps)
            committed = {tp: max(meta.offset, 0) for tp, meta in offsets.items() if tp in set(tps)}
            ends = await _fetched_ends(bootstrap, tps, committed)
            return all(committed.get(tp, 0) >= end for tp, end in ends.items())

        await wait_for(caught_up, timeout=timeout, what=f"group {group} to catch up on {topic}")
    finally:
        await admin.close()


async def _partitions(bootstrap: str, topic: str) -> list[TopicPartition]:
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await probe.start()
    try:
        await probe.topics()
        return [TopicPartition(topic, p) for p in sorted(probe.partitions_for_topic(topic) or ())]
    finally:
        await probe.stop()


async def _fetched_ends(
    bootstrap: str, tps: list[TopicPartition], start: dict[TopicPartition, int]
) -> dict[TopicPartition, int]:
    """Each partition's high watermark from a fresh fetch (a partition with no answer
    yet counts as not caught up)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                fetch_max_wait_ms=10)  # fmt: skip
    await consumer.start()
    try:
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, start.get(tp, 0))
        ends: dict[TopicPartition, int] = {}
        deadline = time.monotonic() + 5
        while len(ends) < len(tps) and time.monotonic() < deadline:
            await consumer.getmany(timeout_ms=50)
            for tp in tps:
                high = consumer.highwater(tp)
                if high is not None:
                    ends[tp] = high
        return {tp: ends.get(tp, start.get(tp, 0) + 1) for tp in tps}
    finally:
        await consumer.stop()


@asynccontextmanager
async def running_pipeline(
    db_dsn: str, kafka_bootstrap: str, topics: Topics, **overrides: Any
) -> AsyncIterator[Pipeline]:
    # FLOW_HOME holds the collector's spool: one per pipeline, gone afterwards.
    scratch = Path(tempfile.mkdtemp(prefix="fm-home-"))
    options: dict[str, Any] = {
        "env": "development",
        "home": scratch,
        "database_url": db_dsn,
        "kafka_bootstrap": kafka_bootstrap,
        "topic_prefix": topics.prefix,
        "consumer_group": f"g-{topics.prefix}",
        "collector_port": free_port(),
        "api_port": free_port(),
        "jira_webhook_secret": JIRA_SECRET,
        "github_webhook_secret": GITHUB_SECRET,
        "ingest_token": INGEST_TOKEN,
        "processor_poll_ms": 50,
        "consumer_session_timeout_ms": 2000,
        "log_json": True,
        "kafka_idempotent_producer": bool(os.environ.get("FLOW_TEST_KAFKA_BOOTSTRAP")),
    }
    options.update(overrides)
    settings = Settings(**options)
    ends = Endpoints(database_url=db_dsn, kafka_bootstrap=kafka_bootstrap)
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(service(settings, ends, stop))
        for service in (run_collectors, run_processor, run_api)
    ]
    collector = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{settings.collector_port}", timeout=15
    )
    api = httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.api_port}", timeout=15)

    async def up() -> bool:
        for task in tasks:
            if task.done():
                task.result()  # a service that died raises here
        c = await collector.get("/health")
        a = await api.get("/ready")
        return c.status_code == 200 and a.status_code == 200

    try:
        await wait_for(up, timeout=30, what="collectors and API to answer")
        yield Pipeline(settings, ends, topics, collector, api)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await collector.aclose()
        await api.aclose()
        shutil.rmtree(scratch, ignore_errors=True)
