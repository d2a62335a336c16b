"""A running flowmetrics for end-to-end tests: collectors, processor and API on
real ports, over the session's real broker and a fresh real database."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from collectors.signatures import sign
from infra.embedded import free_port
from infra.services import Endpoints, run_api, run_collectors, run_processor
from infra.settings import Settings
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
        """Wait until the processor has committed every record on the events topic."""
        await wait_for_group_caught_up(
            self.ends.kafka_bootstrap,
            self.settings.consumer_group,
            self.topics.events,
            timeout=timeout,
        )

    async def get(self, path: str, **params: Any) -> Any:
        response = await self.api.get(
            path, params={k: v for k, v in params.items() if v is not None}
        )
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()


async def wait_for_group_caught_up(
    bootstrap: str, group: str, topic: str, *, timeout: float = 30.0
) -> None:
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await probe.start()
    await admin.start()
    try:
        partitions = probe.partitions_for_topic(topic) or set()
        if not partitions:
            await probe.topics()  # refresh metadata
            partitions = probe.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]

        async def caught_up() -> bool:
            ends = await probe.end_offsets(tps)
            committed = await admin.list_consumer_group_offsets(group, partitions=tps)
            for tp in tps:
                meta = committed.get(tp)
                done = meta.offset if meta is not None and meta.offset >= 0 else 0
                if done < ends[tp]:
                    return False
            return True

        await wait_for(caught_up, timeout=timeout, what=f"group {group} to catch up on {topic}")
    finally:
        await admin.close()
        await probe.stop()


@asynccontextmanager
async def running_pipeline(
    db_dsn: str, kafka_bootstrap: str, topics: Topics, **overrides: Any
) -> AsyncIterator[Pipeline]:
    options: dict[str, Any] = {
        "env": "development",
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
