"""DORA end to end: signed, recorded GitHub payloads in; hand-computed keys out of the API.

Every scenario runs in the week [Mon 2026-03-02, Mon 2026-03-09) UTC, so
"per day" divides by 7 and the band looks at one ISO week.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.github_factory import Delivery, GitHubFactory, sha
from tests.pipeline import Pipeline

pytestmark = pytest.mark.e2e

MON = datetime(2026, 3, 2, tzinfo=UTC)
WEEK = {"start": MON.isoformat(), "end": (MON + timedelta(days=7)).isoformat()}
SHOP, BILLING = "acme/shop", "acme/billing"


def day(n: int, hour: float) -> datetime:
    """Day ``n`` of the week (0 = Monday) at ``hour`` o'clock."""
    return MON + timedelta(days=n, hours=hour)


async def deliver(pipeline: Pipeline, *deliveries: Delivery) -> None:
    for event, body in deliveries:
        response = await pipeline.post_github(event, body)
        assert response.status_code == 202, response.text
    await pipeline.settle()


def deployed(gh: GitHubFactory, number: int, commit: str, created: datetime,
             *statuses: tuple[str, datetime], environment: str = "production",
             rollback_of: int | None = None) -> list[Delivery]:
    """A deployment and its statuses, as GitHub sends them."""
    out = [gh.deployment(number, commit, created, environment=environment,
                         rollback_of=rollback_of)]
    for i, (state, when) in enumerate(statuses):
        out.append(gh.deployment_status(number, number * 100 + i, state, when, commit=commit,
                                        created=created, environment=environment,
                                        rollback_of=rollback_of))
    return out


async def dora(pipeline: Pipeline, **filters: Any) -> dict[str, Any]:
    result: dict[str, Any] = await pipeline.get("/api/v1/dora", **WEEK, **filters)
    # The keys only; the incidents behind them are test_service_attribution.py's.
    result.pop("attributed_incidents")
    return result


async def test_lead_time_with_a_squash_merge_and_a_large_deployment(pipeline: Pipeline) -> None:
    """Lead time per commit through pushes and a squash-merged PR; inactive keeps success."""
    gh = GitHubFactory(SHOP)
    big = [(f"m{i}", day(2, 8) + timedelta(minutes=10 * i)) for i in range(12)]
    await deliver(
        pipeline,
        gh.push("main", "base", [("c1", day(0, 9)), ("c2", day(0, 10))]),
        *deployed(gh, 101, "c2", day(0, 11), ("in_progress", day(0, 11)),
                  ("success", day(0, 11.5))),
        gh.push("feature/x", None, [("f1", day(1, 8))]),
        gh.push("feature/x", "f1", [("f2", day(1, 9))]),
        gh.push("main", "c2", [("squash", day(1, 12))]),
        gh.pull_request_merged(5, head_ref="feature/x", head="f2", merge="squash",
                               created=day(1, 8.5), merged=day(1, 12)),
        *deployed(gh, 102, "squash", day(1, 13), ("success", day(1, 14))),
        # GitHub retires the previous deployment when a newer one succeeds.
        gh.deployment_status(101, 10199, "inactive", day(1, 14), commit="c2",
                             created=day(0, 11)),
        gh.push("main", "squash", big),
        *deployed(gh, 103, "m11", day(2, 15), ("success", day(2, 16))),
    )
    # Lead times (h): c1 2.5, c2 1.5 | f1 6, f2 5 (squash: no row of its own) |
    # m_i = 8 - i/6. Sorted, 16 values: p50 = (6.6667 + 6.8333) / 2, p85 at 12.75.
    assert await dora(pipeline) == {
        **WEEK,
        "deployment_frequency": {"per_day": 0.4286, "per_week": 3.0, "band": "daily"},
        "lead_time_for_changes_hours": {"p50": 6.75, "p85": 7.625},
        "change_failure_rate": 0.0,
        "time_to_restore_hours": {"p50": None, "p85": None},
        "deployments": 3,
        "failed_deployments": 0,
    }
    page = await pipeline.get("/api/v1/deployments", **WEEK)
    assert [d["deployment_id"] for d in page["items"]] == [
        f"{SHOP}:103", f"{SHOP}:102", f"{SHOP}:101"]
    first = page["items"][2]
    assert (first["status"], first["succeeded"], first["failed"]) == ("success", True, False)
    squash = page["items"][1]["changes"]
    assert [(c["sha"], c["kind"], c["lead_time_hours"], c["pull_request"]) for c in squash] == [
        (sha("f1"), "commit", 6.0, f"github:{SHOP}#5"),
        (sha("f2"), "commit", 5.0, f"github:{SHOP}#5"),
        (sha("squash"), "merge", None, f"github:{SHOP}#5"),
    ]
    assert len(page["items"][0]["changes"]) == 12


async def test_rollback_failure_and_incidents_inside_and_outside_the_window(
    pipeline: Pipeline,
) -> None:
    """A rollback, a failed status and attributed incidents fail deployments; one incident
    outside the window blames none."""
    gh = GitHubFactory(SHOP)
    await deliver(
        pipeline,
        *deployed(gh, 201, "a", day(0, 10), ("success", day(0, 10.5))),
        *deployed(gh, 202, "b", day(1, 10), ("success", day(1, 10.5))),
        *deployed(gh, 203, "a", day(1, 11), ("success", day(1, 11.25)), rollback_of=202),
        *deployed(gh, 204, "c", day(2, 10), ("failure", day(2, 10 + 1 / 3))),
        *deployed(gh, 205, "c", day(2, 12), ("success", day(2, 12.5))),
        *deployed(gh, 206, "c", day(2, 13), ("success", day(2, 14)), environment="staging"),
        # In the window: 205 finished 20.5 h before.
        gh.incident_opened(40, day(3, 9)),
        gh.incident_closed(40, day(3, 9), day(3, 12)),
        # Outside: the latest production deployment finished 80 h before.
        gh.incident_opened(41, day(5, 20)),
        gh.incident_closed(41, day(5, 20), day(6, 8)),
        # Explicit: deployed SHA a first shipped with 201.
        gh.incident_opened(42, day(4, 9), body=f"Checkout 500s.\nroot cause: {sha('a')}"),
        gh.incident_closed(42, day(4, 9), day(4, 10)),
    )
    # Finished in production: 201..205; failed: 201 (incident 42), 202 (rolled back by
    # 203), 204 (status), 205 (incident 40). Restore: 3 h, 12 h, 1 h.
    assert await dora(pipeline) == {
        **WEEK,
        "deployment_frequency": {"per_day": 0.5714, "per_week": 4.0, "band": "daily"},
        "lead_time_for_changes_hours": {"p50": None, "p85": None},
        "change_failure_rate": 0.8,
        "time_to_restore_hours": {"p50": 3.0, "p85": 9.3},
        "deployments": 5,
        "failed_deployments": 4,
    }
    page = await pipeline.get("/api/v1/deployments", **WEEK, production="true")
    summary = {
        d["deployment_id"].split(":")[1]: (
            d["failure_reason"], [(i["incident_id"], i["attribution"]) for i in d["incidents"]])
        for d in page["items"]
    }
    assert summary == {
        "201": ("incident", [(f"{SHOP}#42", "explicit_sha")]),
        "202": ("rollback", []),
        "203": (None, []),
        "204": ("status", []),
        "205": ("incident", [(f"{SHOP}#40", "window")]),
    }
    assert page["total"] == 5
    second = await pipeline.get("/api/v1/deployments", **WEEK, limit=2, offset=1)
    assert (second["total"], [d["deployment_id"] for d in second["items"]]) == (
        6, [f"{SHOP}:205", f"{SHOP}:204"])  # newest first; 206 (staging) is the newest


async def test_two_repositories_never_share_incidents(pipeline: Pipeline) -> None:
    """Each repository's incident blames its own deployment, even when another repository
    deployed more recently; filters split the keys by service, team and repository."""
    shop, billing = GitHubFactory(SHOP), GitHubFactory(BILLING)
    await deliver(
        pipeline,
        shop.push("main", "base", [("s1", day(0, 8))]),
        *deployed(shop, 301, "s1", day(0, 9), ("success", day(0, 10))),
        billing.push("main", "base", [("b1", day(0, 7))]),
        *deployed(billing, 401, "b1", day(0, 10), ("success", day(0, 11))),
        shop.incident_opened(50, day(0, 12)),
        shop.incident_closed(50, day(0, 12), day(0, 14)),
        billing.incident_opened(60, day(0, 13)),
    )
    shop_keys = await dora(pipeline, service=SHOP)
    assert (shop_keys["deployments"], shop_keys["failed_deployments"]) == (1, 1)
    assert shop_keys["lead_time_for_changes_hours"] == {"p50": 2.0, "p85": 2.0}
    assert shop_keys["time_to_restore_hours"] == {"p50": 2.0, "p85": 2.0}
    billing_keys = await dora(pipeline, team=BILLING)
    assert (billing_keys["change_failure_rate"], billing_keys["time_to_restore_hours"]) == (
        1.0, {"p50": None, "p85": None})
    assert billing_keys["lead_time_for_changes_hours"] == {"p50": 4.0, "p85": 4.0}
    assert await dora(pipeline, project=BILLING) == billing_keys
    both = await dora(pipeline)
    assert (both["deployments"], both["failed_deployments"]) == (2, 2)
    assert both["deployment_frequency"] == {"per_day": 0.2857, "per_week": 2.0,
                                            "band": "weekly"}
    assert both["lead_time_for_changes_hours"] == {"p50": 3.0, "p85": 3.7}
    page = await pipeline.get("/api/v1/deployments", **WEEK)
    blamed = {d["deployment_id"]: [i["incident_id"] for i in d["incidents"]]
              for d in page["items"]}
    assert blamed == {f"{SHOP}:301": [f"{SHOP}#50"], f"{BILLING}:401": [f"{BILLING}#60"]}


async def test_redelivered_events_count_once(pipeline: Pipeline) -> None:
    """GitHub redeliveries (same delivery id) and replays (new delivery id) fold once; a
    GitHub Pages workflow run is no deployment by default."""
    gh = GitHubFactory(SHOP)
    deliveries = [
        gh.push("main", "base", [("c1", day(0, 9))]),
        *deployed(gh, 501, "c1", day(0, 10), ("success", day(0, 11))),
        gh.incident_opened(70, day(0, 12)),
        gh.incident_closed(70, day(0, 12), day(0, 13)),
        gh.workflow_run("pages build and deployment", "c1", day(0, 11)),
    ]
    for i, (event, body) in enumerate(deliveries):
        assert (await pipeline.post_github(event, body, delivery_id=f"d-{i}")).status_code == 202
        again = await pipeline.post_github(event, body, delivery_id=f"d-{i}")
        assert again.status_code == 200 and again.json()["status"] == "duplicate"
    await deliver(pipeline, *deliveries)  # replayed under new delivery ids
    assert await dora(pipeline) == {
        **WEEK,
        "deployment_frequency": {"per_day": 0.1429, "per_week": 1.0, "band": "weekly"},
        "lead_time_for_changes_hours": {"p50": 2.0, "p85": 2.0},
        "change_failure_rate": 1.0,
        "time_to_restore_hours": {"p50": 1.0, "p85": 1.0},
        "deployments": 1,
        "failed_deployments": 1,
    }


async def test_empty_range_and_bad_range(pipeline: Pipeline) -> None:
    """No data: counts zero, the rest null; start after end is a 422 problem."""
    assert await dora(pipeline) == {
        **WEEK,
        "deployment_frequency": {"per_day": 0.0, "per_week": 0.0, "band": None},
        "lead_time_for_changes_hours": {"p50": None, "p85": None},
        "change_failure_rate": None,
        "time_to_restore_hours": {"p50": None, "p85": None},
        "deployments": 0,
        "failed_deployments": 0,
    }
    response = await pipeline.api.get("/api/v1/dora", params={"start": WEEK["end"],
                                                              "end": WEEK["start"]})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
