"""GitHub backfill against a local fake GitHub (real HTTP), a real broker and
PostgreSQL: every resource kind under primary and secondary rate limits and 5xx
bursts, webhook + backfill of one pull request, and GitHub App authentication."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import SecretStr

from collectors.backfill.command import Request, run_request
from collectors.backfill.progress import LogProgress
from collectors.backfill.runner import RunOptions, ScopeOutcome
from tests.fake_sources import (
    FakeGitHub,
    FakeSources,
    backfill_settings,
    github_commit,
    github_pull_request,
)
from tests.fixtures import fixtures_dir, load_fixture
from tests.pipeline import Pipeline

pytestmark = pytest.mark.integration

REPO = "Codertocat/Hello-World"
START = datetime(2024, 3, 1, tzinfo=UTC)
SINCE = datetime(2019, 1, 1, tzinfo=UTC)


def stamp(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def hello_world(github: FakeGitHub) -> None:
    """The recorded Codertocat/Hello-World objects, plus volume made from them."""
    repo = github.repo(REPO)
    github.add_pull(REPO, load_fixture("github/pull_request/opened.json")["pull_request"])
    review = load_fixture("github/pull_request_review/submitted.json")["review"]
    for n in range(10, 22):
        created = START + timedelta(hours=n)
        pr = github_pull_request(REPO, n, created=created, merged=created + timedelta(hours=3))
        reviews = [
            {
                **copy.deepcopy(review),
                "id": 500_000 + n,
                "submitted_at": stamp(created + timedelta(hours=1)),
            }
        ]
        commits = [github_commit(REPO, f"{n:02d}" + "c" * 38, at=created, parent=None)]
        github.add_pull(REPO, pr, reviews, commits)
    issue = load_fixture("github/issues/opened.json")["issue"]
    repo.issues.append(issue)
    incident = copy.deepcopy(issue)
    incident.update(
        {
            "id": 9_000_001,
            "number": 30,
            "title": "Checkout is down",
            "labels": [{"name": "incident"}],
            "state": "closed",
            "created_at": stamp(START),
            "updated_at": stamp(START + timedelta(hours=2)),
            "closed_at": stamp(START + timedelta(hours=2)),
        }
    )
    repo.issues.append(incident)
    parent = None
    for n in range(30):
        sha = f"{n:04d}" + "a" * 36
        repo.commits.append(
            github_commit(REPO, sha, at=START + timedelta(minutes=10 * n), parent=parent)
        )
        parent = sha
    deployment = load_fixture("github/deployment/created.json")["deployment"]
    status = load_fixture("github/deployment_status/created_success.json")["deployment_status"]
    for n, state in enumerate(("success", "failure", "in_progress")):
        created = START + timedelta(days=1, hours=n)
        dep = {
            **copy.deepcopy(deployment),
            "id": 1001 + n,
            "created_at": stamp(created),
            "updated_at": stamp(created),
            "sha": f"{n:04d}" + "a" * 36,
        }
        repo.deployments.append(dep)
        repo.statuses[1001 + n] = [
            {
                **copy.deepcopy(status),
                "id": 2001 + n,
                "state": state,
                "created_at": stamp(created + timedelta(minutes=5)),
            }
        ]


@pytest.fixture
def fake_github() -> Iterator[FakeSources]:
    github = FakeGitHub()
    hello_world(github)
    with FakeSources(github=github) as fake:
        yield fake


async def backfill(
    pipeline: Pipeline, fake: FakeSources, kinds: tuple[str, ...] | None = None, **overrides: Any
) -> list[Any]:
    settings = backfill_settings(pipeline.settings, fake, **overrides)
    request = Request(
        github_repos=(REPO,),
        github_kinds=kinds or ("issues", "commits", "deployments", "workflow_runs"),
        options=RunOptions(since=SINCE),
    )
    return await run_request(
        settings,
        request,
        database_url=pipeline.ends.database_url,
        kafka_bootstrap=pipeline.ends.kafka_bootstrap,
        progress=LogProgress(),
    )


async def published(pipeline: Pipeline) -> list[dict[str, Any]]:
    """Every record on the events topic, from the beginning."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=pipeline.ends.kafka_bootstrap, enable_auto_commit=False
    )
    await consumer.start()
    try:
        topic = pipeline.topics.events
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[dict[str, Any]] = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(timeout_ms=500)
            out += [orjson.loads(r.value) for records in batch.values() for r in records]
        return out
    finally:
        await consumer.stop()


def rows(pipeline: Pipeline, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(pipeline.ends.database_url) as conn:
        return conn.execute(query, params).fetchall()  # type: ignore[arg-type]


async def test_full_github_backfill_under_rate_limits(
    pipeline: Pipeline, fake_github: FakeSources
) -> None:
    """PRs with reviews and merge commits, issues, an incident, default-branch commits
    and deployments with statuses — through primary and secondary limits and 5xx —
    and the client never sends while a limit it was told about is in force."""
    faults = fake_github.faults
    faults.github_quota, faults.github_window_s = 12, 1.0
    faults.github_secondary_every = 31
    faults.error_burst_every = 19
    outcomes = await backfill(pipeline, fake_github)
    assert all(isinstance(o, ScopeOutcome) for o in outcomes), outcomes
    counts = {o.scope.split(":")[1]: o.items for o in outcomes}
    assert counts == {"issues": 15, "commits": 30, "deployments": 3, "workflow_runs": 0}
    # No deploy workflow pattern is configured: runs are not even listed.
    assert not fake_github.requests("/actions/runs")

    events = await published(pipeline)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_type.setdefault(event["type"], []).append(event)
    assert len(by_type["change.committed"]) == 30
    assert len(by_type["pull_request.merged"]) == 12
    assert all(len(e["commit_shas"]) == 1 for e in by_type["pull_request.merged"])
    assert len(by_type["pull_request.reviewed"]) == 12
    assert sorted(e["status"] for e in by_type["deployment.recorded"]) == [
        "failure",
        "in_progress",
        "pending",
        "pending",
        "pending",
        "success",
    ]
    assert len(by_type["incident.opened"]) == len(by_type["incident.resolved"]) == 1

    await pipeline.settle()
    page = await pipeline.get("/api/v1/work-items", project=REPO, limit=100)
    states = {i["display_key"]: i["flow_state"] for i in page["items"]}
    assert len(states) == 14  # 13 pull requests and 1 issue; the incident is no work item
    assert states[f"{REPO}#2"] == "wip" and states[f"{REPO}#10"] == "done"

    primary = fake_github.requests(outcome="primary")
    secondary = fake_github.requests(outcome="secondary")
    assert secondary, "the secondary limit was never hit"
    # While a limit is in force only requests already in flight may arrive
    # (concurrency 4: at most 3 besides the refused one).
    for refused in [*primary, *secondary]:
        early = [
            s
            for s in fake_github.served
            if refused.at < s.at < refused.until - 0.05 and s is not refused
        ]
        assert len(early) <= 3, (refused, early)
    # remaining=0 is seen on a success first, so a primary 403 only hits requests
    # already in flight; they are few.
    assert len(primary) <= 4 * max(len({int(s.until) for s in primary}), 1)
    assert fake_github.requests(outcome="error")

    (deploy_watermark,) = rows(
        pipeline, "select watermark from backfill_cursors where scope = %s", f"{REPO}:deployments"
    )
    # The in-progress deployment holds the watermark back at its creation.
    assert deploy_watermark[0] == START + timedelta(days=1, hours=2)


async def test_webhook_and_backfill_of_the_same_pull_request_give_one_transition(
    pipeline: Pipeline, fake_github: FakeSources
) -> None:
    """pull_request opened by webhook, then backfilled: one opened transition."""
    body = (fixtures_dir() / "github/pull_request/opened.json").read_bytes()
    assert (await pipeline.post_github("pull_request", body)).status_code == 202
    await pipeline.settle()
    await backfill(pipeline, fake_github, ("issues",))
    await backfill(pipeline, fake_github, ("issues",))
    await pipeline.settle()
    found = rows(
        pipeline, "select to_stage from transitions where item_id = %s", f"github:{REPO}#2"
    )
    assert found == [("Development",)]
    (count,) = rows(
        pipeline,
        "select count(*) from events where type = 'work_item.transitioned' and entity = %s",
        f"github:{REPO}#2",
    )
    assert count == (1,)


async def test_github_app_installation_token(pipeline: Pipeline) -> None:
    """With App credentials the backfill mints an installation token (RS256 JWT)
    once and uses it for every request."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    github = FakeGitHub(token="not-this-one", app_public_key=public)
    hello_world(github)
    with FakeSources(github=github) as fake:
        outcomes = await backfill(
            pipeline,
            fake,
            ("issues", "deployments"),
            github_token=None,
            github_app_id="4242",
            github_app_installation_id="777",
            github_app_private_key=SecretStr(private),
        )
        assert fake.requests("/access_tokens", outcome="ok")
        assert not fake.requests(outcome="auth")
    assert all(isinstance(o, ScopeOutcome) for o in outcomes), outcomes
    assert github.minted == 1
