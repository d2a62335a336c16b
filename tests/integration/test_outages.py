"""Outages of what the pipeline stands on: the broker (memory-only, so it comes back
empty) under a steady webhook load, and PostgreSQL in the middle of a run."""

from __future__ import annotations

import asyncio
import copy
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
import pytest

from bench.generator import generate, wire
from collectors.signatures import sign
from infra.embedded import EmbeddedBroker, free_port
from infra.kafka import ensure_topics
from infra.services import (
    Endpoints,
    projections,
    run_api,
    run_collectors,
    run_processor,
    stage_config,
)
from infra.settings import Settings
from infra.topic_config import topic_specs
from processor.projections import ProjectionRegistry
from processor.replay import rebuild
from schemas.topics import Topics
from tests.fixtures import load_fixture
from tests.integration.faults import GroupOffsets, TcpProxy, counts, produce, snapshot
from tests.pipeline import JIRA_SECRET, wait_derived, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CREATED = "jira/issue_created/cloud_TES-41_created.json"
STARTED = "jira/issue_updated/cloud_TES-41_status_todo_to_inprogress.json"


# -- broker outage --------------------------------------------------------------------


def for_issue(body: dict[str, Any], n: int) -> dict[str, Any]:
    """The recorded delivery, about issue ``LOAD-n`` (its own ids, so its own events)."""
    clone = copy.deepcopy(body)
    clone["issue"]["id"] = str(500_000 + n)
    clone["issue"]["key"] = f"LOAD-{n}"
    if isinstance(clone.get("changelog"), dict):
        clone["changelog"]["id"] = f"{500_000 + n}{clone['changelog'].get('id', '')}"
    return clone


@dataclass
class WebhookLoad:
    """Signed Jira deliveries at a steady rate, retried (same delivery id) on a refused
    connection, as Jira retries: issue n is created, and every third one then started."""

    client: httpx.AsyncClient
    rate: float
    created: list[int] = field(default_factory=list)
    started: set[int] = field(default_factory=set)
    accepted: int = 0
    retries: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    accepted_while: dict[str, int] = field(default_factory=dict)
    phase: str = "before"

    async def run(self, stop: asyncio.Event) -> None:
        created, started = load_fixture(CREATED), load_fixture(STARTED)
        n = 0
        next_at = time.monotonic()
        while not stop.is_set():
            n += 1
            await self._deliver(f"c-{n}", for_issue(created, n))
            self.created.append(n)
            if n % 3 == 0:
                await self._deliver(f"s-{n}", for_issue(started, n))
                self.started.add(n)
            next_at += 1 / self.rate
            await asyncio.sleep(max(next_at - time.monotonic(), 0))

    async def _deliver(self, delivery_id: str, body: dict[str, Any]) -> None:
        raw = orjson.dumps(body)
        headers = {"content-type": "application/json", "x-hub-signature": sign(JIRA_SECRET, raw),
                   "x-atlassian-webhook-identifier": delivery_id}  # fmt: skip
        while True:
            try:
                response = await self.client.post("/webhooks/jira", content=raw, headers=headers)
            except httpx.TransportError:  # the collector restarting
                self.retries += 1
                await asyncio.sleep(0.05)
                continue
            self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
            if response.status_code in (200, 202):
                self.accepted += 1
                self.accepted_while[self.phase] = self.accepted_while.get(self.phase, 0) + 1
                return
            self.retries += 1
            await asyncio.sleep(0.05)


@dataclass
class Services:
    settings: Settings
    ends: Endpoints
    tasks: dict[str, tuple[asyncio.Task[None], asyncio.Event]] = field(default_factory=dict)

    def start(self, name: str) -> None:
        service = {"collectors": run_collectors, "processor": run_processor, "api": run_api}[name]
        stop = asyncio.Event()
        self.tasks[name] = (asyncio.create_task(service(self.settings, self.ends, stop)), stop)

    async def stop(self, name: str) -> None:
        task, stop = self.tasks.pop(name)
        stop.set()
        await task

    def check(self) -> None:
        for name, (task, _) in self.tasks.items():
            if task.done():
                raise AssertionError(f"{name} stopped: {task.exception()!r}")


@asynccontextmanager
async def services(settings: Settings, ends: Endpoints) -> AsyncIterator[Services]:
    running = Services(settings, ends)
    for name in ("collectors", "processor", "api"):
        running.start(name)
    try:
        yield running
    finally:
        for name in list(running.tasks):
            await running.stop(name)


def _broker_outage_settings(
    db_dsn: str, tmp_path: Path, bootstrap: str, topics: Topics
) -> Settings:
    """Every service in-process against one embedded broker that the test stops: short
    timeouts, so the spool takes over (and hands back) within the test's seconds."""
    return Settings(
        env="development", home=tmp_path / "home", database_url=db_dsn,
        kafka_bootstrap=bootstrap, topic_prefix=topics.prefix,
        consumer_group=f"g-{topics.prefix}", collector_port=free_port(), api_port=free_port(),
        jira_webhook_secret=JIRA_SECRET, github_webhook_secret="unused", ingest_token="unused",
        processor_poll_ms=50, consumer_session_timeout_ms=2000, kafka_idempotent_producer=False,
        spool_publish_timeout_s=0.5, spool_probe_interval_s=0.25,
    )  # fmt: skip


def _clients(settings: Settings) -> tuple[httpx.AsyncClient, httpx.AsyncClient]:
    """The collector's and the API's HTTP clients."""
    collector = httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.collector_port}",
                                  timeout=10)  # fmt: skip
    api = httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.api_port}", timeout=10)
    return collector, api


async def test_broker_outage_with_memory_loss_folds_every_accepted_delivery_once(
    db_dsn: str, tmp_path: Path
) -> None:
    """Broker stopped under load, collector restarted meanwhile, broker back *empty*:
    every accepted delivery is folded exactly once."""
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    topics = Topics(f"out{uuid.uuid4().hex[:10]}")
    settings = _broker_outage_settings(db_dsn, tmp_path, bootstrap, topics)
    broker = EmbeddedBroker(tmp_path / "broker-1", port).start()
    collector, api = _clients(settings)
    load = WebhookLoad(collector, rate=25)
    stop_load = asyncio.Event()
    try:
        # With their specs, as `flowmetrics migrate` makes them (and the drainer remakes them).
        await ensure_topics(bootstrap, topics.all(), specs=topic_specs(topics))
        async with services(settings, Endpoints(db_dsn, bootstrap)) as running:
            await wait_for(lambda: _answers(collector, api), timeout=30, what="services")
            load_task = asyncio.create_task(load.run(stop_load))
            await asyncio.sleep(3)

            broker.stop()
            down_at, load.phase = time.monotonic(), "outage"
            await asyncio.sleep(2.5)
            during = (await collector.get("/ready")).json()
            metrics = (await collector.get("/metrics")).text
            await running.stop("collectors")  # a collector restart during the outage
            running.start("collectors")
            await asyncio.sleep(2.5)

            broker = EmbeddedBroker(tmp_path / "broker-2", port).start()  # memory: empty
            outage, load.phase = time.monotonic() - down_at, "after"
            await asyncio.sleep(3)
            stop_load.set()
            await load_task

            running.check()
            try:
                await wait_for(lambda: _all_folded(api, load), timeout=90,
                               what="every accepted delivery folded")  # fmt: skip
            except TimeoutError:
                print("ready after", (await collector.get("/ready")).json(),
                      "rows", counts(snapshot(db_dsn)))  # fmt: skip
                raise
            running.check()
            page = await _items(api)
    finally:
        stop_load.set()
        broker.stop()
        await collector.aclose()
        await api.aclose()

    by_key = {item["display_key"]: item for item in page}
    expected = {f"LOAD-{n}": "Development" if n in load.started else "Backlog"
                for n in load.created}  # fmt: skip
    lost = set(expected) - set(by_key)
    extra = len(page) - len(by_key) + len(set(by_key) - set(expected))
    wrong = {k: by_key[k]["stage"] for k in expected if k in by_key and by_key[k]["stage"]
             != expected[k]}  # fmt: skip
    rows = counts(snapshot(db_dsn))
    transitions_expected = len(load.created) + len(load.started)
    print(
        f"\nbroker outage: outage seconds = {outage:.1f} (memory lost, topics recreated), "
        f"deliveries accepted = {load.accepted} ({load.accepted_while.get('outage', 0)} during "
        f"the outage, through the spool, across a collector restart), retries = {load.retries}, "
        f"statuses = {load.statuses}, loss = {len(lost)}, "
        f"duplicates = {extra + rows['transitions'] - transitions_expected}\n"
        f"  ready during the outage: {during}"
    )
    assert during["ready"] and during["spool_depth"] > 0 and during["broker"] == "unreachable"
    assert _gauge(metrics, "flowmetrics_spool_depth") > 0
    assert 503 not in load.statuses, "a delivery was refused while the spool could take it"
    assert load.accepted_while.get("outage", 0) > 20
    assert not lost and not extra and not wrong, (sorted(lost)[:10], extra, wrong)
    assert rows["work_items"] == len(expected)
    assert rows["transitions"] == transitions_expected


async def test_deliveries_not_yet_folded_survive_a_broker_that_comes_back_empty(
    db_dsn: str, tmp_path: Path
) -> None:
    """Acknowledged by Kafka while the processor is down, then the memory-only broker
    restarts: the spool still holds them until folded, so they arrive anyway."""
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    topics = Topics(f"lag{uuid.uuid4().hex[:10]}")
    settings = _broker_outage_settings(db_dsn, tmp_path, bootstrap, topics)
    broker = EmbeddedBroker(tmp_path / "broker-1", port).start()
    collector, api = _clients(settings)
    load = WebhookLoad(collector, rate=200)
    try:
        await ensure_topics(bootstrap, topics.all(), specs=topic_specs(topics))
        running = Services(settings, Endpoints(db_dsn, bootstrap))
        running.start("collectors")
        running.start("api")
        try:
            await wait_for(lambda: _answers(collector, api), timeout=30, what="services")
            stop_load = asyncio.Event()
            load_task = asyncio.create_task(load.run(stop_load))
            await asyncio.sleep(1.0)
            stop_load.set()
            await load_task
            direct = (await collector.get("/ready")).json()
            broker.stop()
            broker = EmbeddedBroker(tmp_path / "broker-2", port).start()  # memory: empty
            running.start("processor")
            await wait_for(lambda: _all_folded(api, load), timeout=60,
                           what="every accepted delivery folded")  # fmt: skip
            running.check()
            page = await _items(api)
        finally:
            for name in list(running.tasks):
                await running.stop(name)
    finally:
        broker.stop()
        await collector.aclose()
        await api.aclose()
    print(f"\nbroker lost acknowledged records: {load.accepted} deliveries acknowledged by "
          f"Kafka before the processor read them ({direct}), loss = "
          f"{len(load.created) - len(page)}")  # fmt: skip
    assert direct["spool_unconfirmed"] > 0  # in Kafka, not yet folded, still kept
    assert len(page) == len(load.created)


def _gauge(exposition: str, name: str) -> float:
    for line in exposition.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not exported")


async def _answers(collector: httpx.AsyncClient, api: httpx.AsyncClient) -> bool:
    return ((await collector.get("/ready")).status_code == 200
            and (await api.get("/ready")).status_code == 200)  # fmt: skip


async def _items(api: httpx.AsyncClient) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    while True:
        response = await api.get("/api/v1/work-items", params={"limit": 500,
                                                               "offset": len(items)})  # fmt: skip
        assert response.status_code == 200, response.text
        page = response.json()["items"]
        items += page
        if len(page) < 500:
            return items


async def _all_folded(api: httpx.AsyncClient, load: WebhookLoad) -> bool:
    items = await _items(api)
    started = {i["display_key"] for i in items if i["stage"] == "Development"}
    return len(items) >= len(load.created) and len(started) >= len(load.started)


# -- database outage --------------------------------------------------------------------

DB_EVENTS = 20_000
DB_OUTAGE_S = 6.0


def through(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


async def test_database_outage_stops_commits_retries_and_resumes(
    db_dsn: str, kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    """PostgreSQL cut off mid-run: no offset commit while it is away, reconnects with
    backoff, then folds everything; the result equals a rebuild from the events."""
    stream = list(generate(DB_EVENTS, seed=11))
    await produce(kafka_bootstrap, topics.events, (wire(e) for e in stream))
    target = urlsplit(db_dsn)
    proxy = await TcpProxy(target.hostname or "127.0.0.1", target.port or 5432).start()
    settings = Settings(
        env="development", home=tmp_path, database_url=through(db_dsn, proxy.port),
        kafka_bootstrap=kafka_bootstrap, topic_prefix=topics.prefix,
        consumer_group=f"g-{topics.prefix}", processor_poll_ms=50, processor_batch_max=1000,
        consumer_session_timeout_ms=2000, kafka_idempotent_producer=False,
    )  # fmt: skip
    registry = ProjectionRegistry(projections(settings, stage_config(settings)))
    claimed = {t for p in registry.projections for t in p.event_types}
    expected = len({e["event_id"] for e in stream if e["type"] in claimed})
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_processor(settings, Endpoints(settings.database_url, kafka_bootstrap), stop)
    )
    try:
        async with GroupOffsets(kafka_bootstrap, settings.consumer_group, topics.events,
                                4) as group:  # fmt: skip

            async def progressed(n: int) -> bool:
                assert not task.done(), task
                return await group.total() >= n

            await wait_for(lambda: progressed(DB_EVENTS // 4), timeout=120, what="progress")
            proxy.cut()
            cut_at = time.monotonic()
            await asyncio.sleep(1.0)  # a commit already under way may still land
            frozen = await group.by_partition()
            await asyncio.sleep(DB_OUTAGE_S - 1.0)
            during = await group.by_partition()
            attempts = proxy.refused
            proxy.restore()
            outage = time.monotonic() - cut_at
            await wait_for(lambda: progressed(DB_EVENTS), timeout=180, what="the rest")
            await wait_derived(db_dsn, timeout=120)
    finally:
        stop.set()
        await task
        await proxy.close()

    incremental = snapshot(db_dsn)
    await rebuild(db_dsn, registry)
    rebuilt = snapshot(db_dsn)
    stored = incremental["events"][0]
    print(
        f"\ndatabase outage: outage seconds = {outage:.1f}, reconnect attempts while away = "
        f"{attempts}, events = {DB_EVENTS}, distinct stored = {stored} of {expected}, "
        f"loss = {expected - stored}, duplicates = {stored - expected} (primary key), "
        f"offsets committed while away = {sum(during.values()) - sum(frozen.values())}\n"
        f"  rows: {counts(incremental)}"
    )
    assert during == frozen, "offsets were committed while the database was away"
    assert 2 <= attempts <= 20, f"{attempts} connection attempts: not a backoff"
    assert stored == expected
    assert rebuilt == incremental, "the incremental fold differs from a rebuild"
