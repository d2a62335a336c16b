"""Cross-service attribution end to end: a service catalog file, a local Prometheus with
the OpenTelemetry service graph, signed GitHub webhooks in; attributions out of the API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from schemas.topics import Topics
from tests.e2e.test_dora import WEEK, day, deliver, deployed
from tests.fake_prometheus import Answer, error, fake_prometheus, series, timeout, vector
from tests.github_factory import GitHubFactory
from tests.pipeline import Pipeline, running_pipeline, wait_for

pytestmark = pytest.mark.e2e

CATALOG = """
[services.checkout]
team = "web"
repos = ["acme/checkout"]
jira_projects = ["CHK"]
[services.payments]
team = "money"
repos = ["acme/payments"]
[services.gateway]
repos = ["acme/gateway"]
[services.ledger]
repos = ["acme/ledger"]
[services.vault]
repos = ["acme/vault"]
"""


@asynccontextmanager
async def with_graph(
    tmp_path: Path, db_dsn: str, kafka_bootstrap: str, topics: Topics, *answers: Answer
) -> AsyncIterator[Pipeline]:
    catalog = tmp_path / "services.toml"
    catalog.write_text(CATALOG)
    with fake_prometheus(*answers) as prometheus:
        async with running_pipeline(
            db_dsn, kafka_bootstrap, topics, services_file=catalog,
            prometheus_url=prometheus.url, prometheus_interval_s=0.3, prometheus_timeout_s=0.3,
        ) as pipeline:
            yield pipeline


async def dependencies(pipeline: Pipeline, service: str, **params: Any) -> list[Any] | None:
    """(service, path, stale) of each dependency; None while the service is unknown (404)."""
    response = await pipeline.api.get(f"/api/v1/services/{service}/dependencies",
                                      params=params)
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    return [(d["service"], d["path"], d["stale"]) for d in response.json()["dependencies"]]


async def until(pipeline: Pipeline, service: str, expected: list[Any], **params: Any) -> None:
    async def there() -> bool:
        return await dependencies(pipeline, service, **params) == expected

    await wait_for(there, timeout=30, what=f"{service}'s dependencies {expected}")


async def test_checkout_incident_is_attributed_to_a_payments_deploy_through_the_edge(
    tmp_path: Path, db_dsn: str, kafka_bootstrap: str, topics: Topics
) -> None:
    """Prometheus down, then too slow, then answering: the edge checkout → payments
    arrives (the self-loop does not), and checkout's incident blames payments' deploy."""
    graph = vector(day(2, 0), series("checkout", "payments"), series("checkout", "checkout"),
                   series("payments", "ledger", "messaging_system"))
    async with with_graph(tmp_path, db_dsn, kafka_bootstrap, topics,
                          error(), timeout(1.0), graph) as pipeline:
        await until(pipeline, "checkout", [
            ("payments", ["checkout", "payments"], False),
            ("ledger", ["checkout", "payments", "ledger"], False)])
        payments, checkout = GitHubFactory("acme/payments"), GitHubFactory("acme/checkout")
        await deliver(
            pipeline,
            checkout.push("main", "base", [("c1", day(2, 5))]),
            *deployed(checkout, 11, "c1", day(2, 6), ("success", day(2, 6.5))),
            checkout.incident_opened(7, day(2, 12)),
            payments.push("main", "base", [("p1", day(2, 9))]),
            *deployed(payments, 21, "p1", day(2, 10), ("success", day(2, 11))),
        )
        page = await pipeline.get("/api/v1/deployments", **WEEK, production="true")
        blamed = {d["deployment_id"]: (d["failure_reason"], d["incidents"])
                  for d in page["items"]}
        assert blamed["acme/checkout:11"] == (None, [])
        reason, incidents = blamed["acme/payments:21"]
        assert reason == "incident"
        assert [(i["incident_id"], i["service"], i["attribution"], i["service_path"])
                for i in incidents] == [
            ("acme/checkout#7", "checkout", "window", ["checkout", "payments"])]
        keys = await pipeline.get("/api/v1/dora", **WEEK, service="payments")
        assert (keys["deployments"], keys["failed_deployments"]) == (1, 1)
        assert [(i["incident_id"], i["deployment_id"], i["service_path"])
                for i in keys["attributed_incidents"]] == [
            ("acme/checkout#7", "acme/payments:21", ["checkout", "payments"])]
        services = {s["service"]: s for s in (await pipeline.get("/api/v1/services"))["items"]}
        assert (services["checkout"]["team"], services["checkout"]["jira_projects"]) == (
            "web", ["CHK"])
        assert services["checkout"]["depends_on"] == ["payments"]  # no self-loop
        assert services["payments"]["used_by"] == ["checkout"]


async def test_no_attribution_through_a_stale_edge_or_beyond_the_depth(
    tmp_path: Path, db_dsn: str, kafka_bootstrap: str, topics: Topics
) -> None:
    """checkout → payments last seen 10 days before: stale. checkout → gateway → ledger →
    vault: vault is 3 hops away. The incident skips both later deployments and goes to
    ledger's, 2 hops away."""
    old = vector(day(2, 0) - timedelta(days=10), series("checkout", "payments"))
    now = vector(day(2, 0), series("checkout", "gateway"), series("gateway", "ledger"),
                 series("ledger", "vault"))
    async with with_graph(tmp_path, db_dsn, kafka_bootstrap, topics, old, now) as pipeline:
        await until(pipeline, "checkout", [
            ("gateway", ["checkout", "gateway"], False),
            ("payments", ["checkout", "payments"], True),
            ("ledger", ["checkout", "gateway", "ledger"], False),
            ("vault", ["checkout", "gateway", "ledger", "vault"], False),
        ], depth=3, include_stale="true")
        assert await dependencies(pipeline, "checkout") == [
            ("gateway", ["checkout", "gateway"], False),
            ("ledger", ["checkout", "gateway", "ledger"], False)]
        payments, vault = GitHubFactory("acme/payments"), GitHubFactory("acme/vault")
        ledger, checkout = GitHubFactory("acme/ledger"), GitHubFactory("acme/checkout")
        await deliver(
            pipeline,
            *deployed(ledger, 31, "l1", day(2, 8), ("success", day(2, 9))),
            *deployed(payments, 21, "p1", day(2, 10), ("success", day(2, 11))),
            *deployed(vault, 41, "v1", day(2, 10), ("success", day(2, 11.5))),
            checkout.incident_opened(7, day(2, 12)),
        )
        page = await pipeline.get("/api/v1/deployments", **WEEK, production="true")
        blamed = {d["deployment_id"]: [i["service_path"] for i in d["incidents"]]
                  for d in page["items"]}
        assert blamed == {"acme/ledger:31": [["checkout", "gateway", "ledger"]],
                          "acme/payments:21": [], "acme/vault:41": []}
