"""The service graph on real components: the scraper against a local Prometheus
stand-in, and the services + DORA projections on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from psycopg import AsyncConnection

from collectors.publisher import RawDelivery
from collectors.service_graph_scraper import ScrapeFailed, ServiceGraphScraper
from processor.consumer import EventStore
from processor.dora import DoraConfig
from processor.dora_store import DoraProjection
from processor.projections import ProjectionRegistry
from processor.services_graph import edges_from_vector
from processor.services_store import IncidentAttribution, ServicesProjection
from schemas.events import CanonicalEvent, ServiceEdgeObserved
from tests.fake_prometheus import error, fake_prometheus, series, timeout, vector
from tests.pipeline import wait_for
from tests.unit.test_dora_fold import Events, at

pytestmark = pytest.mark.integration

WEEK = timedelta(days=7)
CHECKOUT, PAYMENTS, LEDGER, VAULT = "checkout", "payments", "ledger", "vault"


class ListPublisher:
    """Keeps what the scraper publishes (the collectors' Publisher protocol)."""

    def __init__(self) -> None:
        self.events: list[CanonicalEvent] = []

    async def publish(self, raw: RawDelivery | None, events: Sequence[CanonicalEvent]) -> None:
        self.events.extend(events)

    async def dead_letter(self, raw: RawDelivery, reason: str) -> None:
        raise AssertionError("the scraper dead-letters nothing")


# --- the scraper against a local Prometheus -------------------------------------------------


async def test_scrape_publishes_one_edge_per_pair() -> None:
    """A recorded-shape vector becomes edge events; self-loops and unlabelled pairs drop."""
    seen = datetime(2026, 3, 4, 12, tzinfo=UTC)
    answer = vector(seen, series(CHECKOUT, PAYMENTS), series(CHECKOUT, CHECKOUT),
                    series(PAYMENTS, LEDGER, "messaging_system"), series(None, PAYMENTS))
    with fake_prometheus(answer) as prometheus:
        publisher = ListPublisher()
        scraper = ServiceGraphScraper(base_url=prometheus.url, publisher=publisher)
        assert await scraper.scrape_and_publish() == 2
    edges = [e for e in publisher.events if isinstance(e, ServiceEdgeObserved)]
    assert [(e.client, e.server, e.asynchronous, e.occurred_at) for e in edges] == [
        (CHECKOUT, PAYMENTS, False, seen), (PAYMENTS, LEDGER, True, seen)]
    assert "traces_service_graph_request_total" in prometheus.queries[0]


async def test_an_error_answer_and_a_timeout_fail_the_scrape() -> None:
    """Prometheus' error answer and an answer later than the timeout are ScrapeFailed."""
    with fake_prometheus(error(422, "execution", "query timed out"), timeout(2.0)) as prometheus:
        scraper = ServiceGraphScraper(base_url=prometheus.url, publisher=ListPublisher(),
                                      timeout=0.3)
        with pytest.raises(ScrapeFailed, match="422: query timed out"):
            await scraper.scrape()
        with pytest.raises(ScrapeFailed, match="unreachable"):
            await scraper.scrape()


async def test_failing_scrapes_back_off_and_the_schedule_goes_on() -> None:
    """Down, then slow, then answering: the scheduler retries and publishes at last;
    a Prometheus that is not there at all never stops it either."""
    answers = [error(), timeout(1.0), vector(datetime.now(UTC), series(CHECKOUT, PAYMENTS))]
    with fake_prometheus(*answers) as prometheus:
        publisher = ListPublisher()
        scraper = ServiceGraphScraper(base_url=prometheus.url, publisher=publisher,
                                      interval=0.5, timeout=0.2)
        stop = asyncio.Event()
        task = asyncio.create_task(scraper.run(stop))

        async def published() -> bool:
            return bool(publisher.events)

        await wait_for(published, timeout=10, what="an edge after two failures")
        stop.set()
        await asyncio.wait_for(task, 5)
    assert scraper.failures == 2 and not task.exception()
    nobody = ServiceGraphScraper(base_url=prometheus.url, publisher=ListPublisher(),
                                 interval=0.05, timeout=0.1)  # the server is gone now
    stop = asyncio.Event()
    task = asyncio.create_task(nobody.run(stop))
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert nobody.failures >= 2 and nobody.scrapes == nobody.failures


# --- the projections on PostgreSQL ------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def conn(db_dsn: str) -> AsyncIterator[AsyncConnection[Any]]:
    async with await AsyncConnection.connect(db_dsn) as connection:
        yield connection


def store(depth: int = 2) -> EventStore:
    attribution = IncidentAttribution(window=timedelta(hours=48), depth=depth, stale_after=WEEK)
    return EventStore(ProjectionRegistry([
        DoraProjection(DoraConfig(), attribution), ServicesProjection(attribution, WEEK)]))


async def fold(conn: AsyncConnection[Any], events: Sequence[CanonicalEvent],
               depth: int = 2) -> None:
    async with conn.transaction():
        await store(depth).fold(conn, events)


async def query(conn: AsyncConnection[Any], sql: str) -> list[tuple[Any, ...]]:
    async with conn.cursor() as cur:
        await cur.execute(sql)
        return [tuple(r) for r in await cur.fetchall()]


def observed(when: datetime, *pairs: tuple[str, str]) -> list[ServiceEdgeObserved]:
    return edges_from_vector(vector(when, *(series(c, s) for c, s in pairs)).body,
                             received_at=when)


def scenario() -> list[CanonicalEvent]:
    """payments deploys at hour 10, checkout at hour 6; checkout's incident at hour 12;
    ledger (2 hops) deploys at hour 11 — but only ledger → vault exists besides."""
    pay = Events(repo="acme/payments", service=PAYMENTS)
    pay.push("main", "base", ("p1", 9))
    pay.deploy(1, "p1", 9.5, ("success", 10))
    shop = Events(repo="acme/checkout", service=CHECKOUT)
    shop.push("main", "base", ("c1", 5))
    shop.deploy(2, "c1", 5.5, ("success", 6))
    shop.incident(7, 12, 13)
    vault = Events(repo="acme/vault", service=VAULT)
    vault.push("main", "base", ("v1", 10))
    vault.deploy(3, "v1", 10.5, ("success", 11))
    edges = observed(at(0), (CHECKOUT, PAYMENTS), (PAYMENTS, LEDGER), (LEDGER, VAULT))
    return [*pay.all, *shop.all, *vault.all, *edges]


INCIDENT = "select incident_id, deployment_id, attribution, service_path from incidents"
FAILED = "select deployment_id, failed, failure_reason from deployments order by 1"


async def test_an_incident_goes_to_a_dependency_in_any_event_order(
    conn: AsyncConnection[Any]
) -> None:
    """checkout's incident blames payments' later deployment through the edge, whatever the
    order and batching of deployments, incident and edges; the blamed one is failed."""
    events = scenario()
    shuffled = events + events[:4]
    random.Random(7).shuffle(shuffled)
    for i in range(0, len(shuffled), 3):
        await fold(conn, shuffled[i : i + 3])
    assert await query(conn, INCIDENT) == [
        ("acme/checkout#7", "acme/payments:1", "window", [CHECKOUT, PAYMENTS])]
    assert await query(conn, FAILED) == [
        ("acme/checkout:2", False, None), ("acme/payments:1", True, "incident"),
        ("acme/vault:3", False, None)]
    assert await query(conn, "select failed from production_deployments "
                             "where deployment_id = 'acme/payments:1'") == [(True,)]


async def test_same_service_setting_keeps_the_dora_rule(conn: AsyncConnection[Any]) -> None:
    """Depth 0 (FLOW_INCIDENT_ATTRIBUTION=service): the incident stays on checkout."""
    await fold(conn, scenario(), depth=0)
    assert await query(conn, INCIDENT) == [
        ("acme/checkout#7", "acme/checkout:2", "window", [CHECKOUT])]


async def test_edges_fold_with_first_and_last_seen_and_go_stale(
    conn: AsyncConnection[Any]
) -> None:
    """An edge keeps its first and last observation; one not seen for 7 days before the
    graph's latest observation is marked stale, not deleted — and no longer attributes."""
    old, new = at(12) - timedelta(days=10), at(0)
    await fold(conn, observed(old, (CHECKOUT, PAYMENTS)))
    await fold(conn, observed(old + timedelta(hours=2), (CHECKOUT, PAYMENTS)))
    await fold(conn, observed(new, (PAYMENTS, LEDGER)))
    assert await query(conn, "select client, server, first_seen, last_seen, stale "
                             "from service_edges order by 1") == [
        (CHECKOUT, PAYMENTS, old, old + timedelta(hours=2), True),
        (PAYMENTS, LEDGER, new, new, False)]
    pay = Events(repo="acme/payments", service=PAYMENTS)
    pay.deploy(1, "p1", 9.5, ("success", 10))
    shop = Events(repo="acme/checkout", service=CHECKOUT)
    shop.incident(7, 12)
    await fold(conn, [*pay.all, *shop.all])
    assert await query(conn, INCIDENT) == [("acme/checkout#7", None, None, None)]
    # Seen again within the incident's week: now the incident goes through it.
    await fold(conn, observed(at(14), (CHECKOUT, PAYMENTS)))
    assert await query(conn, INCIDENT) == [
        ("acme/checkout#7", "acme/payments:1", "window", [CHECKOUT, PAYMENTS])]
    assert await query(conn, FAILED) == [("acme/payments:1", True, "incident")]


async def test_an_explicit_link_is_not_moved(conn: AsyncConnection[Any]) -> None:
    """An incident naming its root cause keeps it; the path is its own service."""
    shop = Events(repo="acme/checkout", service=CHECKOUT)
    shop.push("main", "base", ("c1", 5))
    shop.deploy(2, "c1", 5.5, ("success", 6))
    shop.incident(7, 12, root_cause="c1")
    pay = Events(repo="acme/payments", service=PAYMENTS)
    pay.deploy(1, "p1", 9.5, ("success", 10))
    await fold(conn, [*shop.all, *pay.all, *observed(at(0), (CHECKOUT, PAYMENTS))])
    assert await query(conn, INCIDENT) == [
        ("acme/checkout#7", "acme/checkout:2", "explicit_sha", [CHECKOUT])]
