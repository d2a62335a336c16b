"""Jira backfill against a local fake Jira (real HTTP), a real broker and PostgreSQL:
full passes under faults, webhook + backfill of one change, 5,000-entry changelogs,
Data Center shapes, resume after a kill, and reconcile."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr

from collectors.backfill.command import Request, run_request
from collectors.backfill.cursors import Cursor, CursorStore, RunState
from collectors.backfill.progress import LogProgress
from collectors.backfill.runner import RunOptions, ScopeOutcome
from tests.fake_sources import (
    TES4_FILES,
    TES41_FILES,
    FakeJira,
    FakeSources,
    Faults,
    backfill_env,
    backfill_settings,
    jira_issue_from_webhooks,
    jira_time,
    status_moves,
    synthetic_jira_issue,
    tes4_with_gap_filled,
)
from tests.fixtures import fixtures_dir
from tests.pipeline import Pipeline, wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
START = datetime(2024, 3, 1, tzinfo=UTC)


def flow_issues(count: int, **kwargs: Any) -> FakeJira:
    jira = FakeJira(**kwargs)
    for n in range(1, count + 1):
        jira.add(synthetic_jira_issue(n, created=START + timedelta(minutes=n)))
    return jira


@pytest.fixture
def fake_jira() -> Iterator[FakeSources]:
    with FakeSources(jira=flow_issues(45)) as fake:
        yield fake


async def backfill(
    pipeline: Pipeline,
    fake: FakeSources,
    *projects: str,
    since: datetime | None = START - timedelta(days=1),
    restart: bool = False,
    **overrides: Any,
) -> list[Any]:
    settings = backfill_settings(pipeline.settings, fake, **overrides)
    request = Request(
        jira_projects=projects,
        options=RunOptions(since=since, restart=restart, overlap=timedelta(minutes=5)),
    )
    return await run_request(
        settings,
        request,
        database_url=pipeline.ends.database_url,
        kafka_bootstrap=pipeline.ends.kafka_bootstrap,
        progress=LogProgress(),
    )


def rows(pipeline: Pipeline, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(pipeline.ends.database_url) as conn:
        return conn.execute(query, params).fetchall()  # type: ignore[arg-type]


def transitions_by_item(pipeline: Pipeline) -> dict[str, list[tuple[Any, ...]]]:
    found: dict[str, list[tuple[Any, ...]]] = {}
    for item, event_id, at, to_status in rows(
        pipeline,
        "select item_id, event_id, occurred_at, to_status from transitions "
        "order by item_id, occurred_at",
    ):
        found.setdefault(item, []).append((event_id, at, to_status))
    return found


def cursor_row(pipeline: Pipeline, scope: str) -> tuple[Any, ...]:
    (row,) = rows(
        pipeline,
        "select watermark, run, items_total, last_error from "
        "backfill_cursors where source = 'jira' and scope = %s",
        scope,
    )
    return row


async def test_full_cloud_backfill_through_5xx_drops_and_429s(
    pipeline: Pipeline, fake_jira: FakeSources
) -> None:
    """Every issue and transition arrives despite 5xx bursts, dropped connections and
    429s, and no request is sent while a Retry-After is in force."""
    assert fake_jira.jira is not None
    fake_jira.jira.embed_limit = 0  # every changelog through /issue/{id}/changelog
    fake_jira.faults.error_burst_every = 13
    fake_jira.faults.drop_every = 29
    fake_jira.faults.jira_429_every = 17
    (outcome,) = await backfill(pipeline, fake_jira, "FLOW")
    assert isinstance(outcome, ScopeOutcome), outcome
    assert (outcome.items, outcome.mode) == (45, "full")
    await pipeline.settle()

    page = await pipeline.get("/api/v1/work-items", project="FLOW", limit=100)
    assert page["total"] == 45
    assert {i["flow_state"] for i in page["items"]} == {"done"}
    history = await pipeline.get("/api/v1/work-items/FLOW-7/history")
    assert [t["to_status"] for t in history["transitions"]] == ["To Do", "In Progress", "Done"]
    by_item = transitions_by_item(pipeline)
    assert len(by_item) == 45 and all(len(v) == 3 for v in by_item.values())

    assert fake_jira.requests(outcome="error") and fake_jira.requests(outcome="drop")
    refusals = fake_jira.requests(outcome="429")
    assert refusals
    # While a Retry-After is in force only requests already in flight may arrive
    # (concurrency 4: at most 3 besides the refused one); a client that ignored it
    # would retry at once, again and again.
    for refused in refusals:
        early = [
            s
            for s in fake_jira.served
            if refused.at < s.at < refused.until - 0.05 and s is not refused
        ]
        assert len(early) <= 3, (refused, early)
    watermark, run, items_total, error = cursor_row(pipeline, "project:FLOW")
    assert run is None and error is None and items_total == 45 and watermark is not None


async def test_webhook_and_backfill_of_the_same_change_give_one_transition(
    pipeline: Pipeline,
) -> None:
    """TES-41 delivered by webhooks, then backfilled (twice): each change folds once."""
    for n, path in enumerate(TES41_FILES):
        body = (fixtures_dir() / path).read_bytes()
        assert (await pipeline.post_jira(body, delivery_id=f"tes41-{n}")).status_code == 202
    await pipeline.settle()
    before = await pipeline.get("/api/v1/work-items/TES-41/history")

    jira = FakeJira(time_zone="America/Los_Angeles")
    jira.add(jira_issue_from_webhooks(*TES41_FILES))
    with FakeSources(jira=jira) as fake:
        since = datetime(2019, 2, 1, tzinfo=UTC)
        await backfill(pipeline, fake, "TES", since=since)
        await backfill(pipeline, fake, "TES", since=since, restart=True)
        searches = fake.requests("/search/jql")
    await pipeline.settle()

    after = await pipeline.get("/api/v1/work-items/TES-41/history")
    moves = [(t["from_status"], t["to_status"]) for t in after["transitions"]]
    assert moves == [
        (None, "To Do"),
        ("To Do", "In Progress"),
        ("In Progress", "Done"),
        ("Done", "To Do"),
    ]
    assert after["transitions"] == before["transitions"]  # the webhook's copies won
    (count,) = rows(
        pipeline,
        "select count(*) from events where type = "
        "'work_item.transitioned' and entity = 'jira:10040'",
    )
    assert count == (4,)
    # JQL dates are the user's zone (-08:00): 2019-02-01 00:00 UTC is 31 Jan 16:00 there.
    assert 'updated >= "2019-01-31 16:00"' in searches[0].query["jql"]


async def test_five_thousand_changelog_entries_on_one_issue(pipeline: Pipeline) -> None:
    """An epic with 5,000 histories: every page fetched, every status move folded once."""
    path = tuple("To Do" if n % 2 == 0 else "In Progress" for n in range(2_501))
    epic = synthetic_jira_issue(
        1, created=START, path=path, other_histories=2_500, step=timedelta(minutes=3)
    )
    assert len(epic.histories) == 5_000 and status_moves(epic) == 2_500
    jira = FakeJira()
    jira.add(epic)
    with FakeSources(jira=jira, faults=Faults(error_burst_every=11)) as fake:
        started = time.monotonic()
        (outcome,) = await backfill(pipeline, fake, "FLOW")
        took = time.monotonic() - started
        pages = {s.query["startAt"] for s in fake.requests("/changelog", outcome="ok")}
    assert isinstance(outcome, ScopeOutcome) and outcome.events == 1 + 1 + 2_500
    assert pages == {str(n) for n in range(0, 5_000, 100)}
    await pipeline.settle(timeout=60)
    (count,) = rows(pipeline, "select count(*) from transitions where item_id = 'jira:200001'")
    assert count == (2_501,)
    history = await pipeline.get("/api/v1/work-items/FLOW-1/history")
    assert history["transitions"][-1]["to_status"] == "To Do"
    assert took < 30


async def test_data_center_shapes_and_a_webhook_gap(pipeline: Pipeline) -> None:
    """Data Center (PAT, /rest/api/2/search with startAt/total, whole changelogs
    embedded or fetched with the issue): the backfill fills the change no webhook
    delivered, and shares ids with the ones that were."""
    for n, path in enumerate(TES4_FILES):
        body = (fixtures_dir() / path).read_bytes()
        assert (await pipeline.post_jira(body, delivery_id=f"tes4-{n}")).status_code == 202
    jira = FakeJira(api="datacenter", time_zone="Asia/Shanghai", embed_limit=3)
    jira.add(tes4_with_gap_filled())  # 5 histories: more than embedded, fetched with the issue
    with FakeSources(jira=jira) as fake:
        outcomes = await backfill(
            pipeline,
            fake,
            "TES",
            since=datetime(2019, 8, 1, tzinfo=UTC),
            jira_pat=SecretStr("jira-pat"),
            jira_api_token=None,
            jira_email="",
        )
        assert fake.requests("/rest/api/2/search") and fake.requests("/rest/api/2/issue/10300")
        assert not fake.requests("/rest/api/3/")
    assert all(isinstance(o, ScopeOutcome) for o in outcomes), outcomes
    await pipeline.settle()
    history = await pipeline.get("/api/v1/work-items/TES-4/history")
    assert [(t["from_status"], t["to_status"]) for t in history["transitions"]] == [
        (None, "In Progress"),
        ("In Progress", "Resolved"),
        ("Resolved", "Reopened"),
        ("Reopened", "In Progress"),
        ("In Progress", "Resolved"),
        ("Resolved", "Closed"),
    ]


async def test_a_vanished_resume_key_falls_back_to_plain_paging(pipeline: Pipeline) -> None:
    """Resuming after an issue that was deleted since (Jira refuses the key in JQL):
    the pass pages the plain query and skips what it had already done."""
    jira = flow_issues(30)
    with FakeSources(jira=jira) as fake:
        store = await CursorStore.connect(pipeline.ends.database_url)
        try:
            run = RunState(
                START - timedelta(days=1),
                datetime.now(UTC),
                START - timedelta(days=1),
                {"after_key": "FLOW-12"},
            )
            await store.save(Cursor("jira", "project:FLOW", run=run))
        finally:
            await store.close()
        del jira.issues[str(200_012)]
        (outcome,) = await backfill(pipeline, fake, "FLOW")
        jqls = [s.query["jql"] for s in fake.requests("/search/jql")]
    assert isinstance(outcome, ScopeOutcome) and outcome.mode == "resume"
    assert outcome.items == 18  # FLOW-13 .. FLOW-30
    assert any('issuekey > "FLOW-12"' in q for q in jqls)
    await pipeline.settle()
    keys = {
        i["display_key"] for i in (await pipeline.get("/api/v1/work-items", limit=100))["items"]
    }
    assert keys == {f"FLOW-{n}" for n in range(13, 31)}


async def test_reconcile_reads_only_what_changed_since_the_watermark(pipeline: Pipeline) -> None:
    """After a full pass, reconcile starts at watermark - overlap and picks up the
    change a webhook missed."""
    jira = flow_issues(25)
    with FakeSources(jira=jira) as fake:
        await backfill(pipeline, fake, "FLOW")
        watermark, *_ = cursor_row(pipeline, "project:FLOW")
        changed = jira.by_key("FLOW-3")
        now = datetime.now(UTC)
        changed.histories.append(
            {
                "id": "9999999",
                "created": jira_time(now),
                "items": [
                    {
                        "field": "status",
                        "fieldtype": "jira",
                        "from": "10002",
                        "fromString": "Done",
                        "to": "10001",
                        "toString": "To Do",
                    }
                ],
            }
        )
        changed.issue["fields"]["updated"] = jira_time(now)
        changed.issue["fields"]["status"]["name"] = "To Do"
        fake.served.clear()
        (outcome,) = await backfill(pipeline, fake, "FLOW", since=None)
        jql = fake.requests("/search/jql")[0].query["jql"]
    assert isinstance(outcome, ScopeOutcome)
    assert (outcome.mode, outcome.items) == ("incremental", 1)
    expected = jira_time(watermark - timedelta(minutes=5))[:16].replace("T", " ")
    assert f'updated >= "{expected}"' in jql
    await pipeline.settle()
    history = await pipeline.get("/api/v1/work-items/FLOW-3/history")
    assert [t["to_status"] for t in history["transitions"]] == [
        "To Do",
        "In Progress",
        "Done",
        "To Do",
    ]
    assert history["item"]["flow_state"] == "wip"


async def test_a_killed_backfill_resumes_where_it_stopped(pipeline: Pipeline) -> None:
    """`flowmetrics backfill` killed (SIGKILL) mid-way, then re-run: it resumes after
    the last durable page, and every transition is in the database exactly once."""
    jira = flow_issues(120)
    faults = Faults(changelog_latency_s=0.0)
    with FakeSources(jira=jira, faults=faults) as fake:
        # Changelogs only through the paged endpoint, slowly: a pass takes seconds.
        jira.embed_limit = 0
        faults.changelog_latency_s = 0.05
        settings = backfill_settings(pipeline.settings, fake, backfill_concurrency=2)
        env = {
            **os.environ,
            **backfill_env(settings, pipeline.ends.database_url, pipeline.ends.kafka_bootstrap),
        }
        argv = [
            sys.executable,
            "-m",
            "infra.cli",
            "backfill",
            "jira",
            "--project",
            "FLOW",
            "--since",
            "2024-02-01",
            "--progress",
            "log",
        ]
        first = await asyncio.create_subprocess_exec(
            *argv,
            cwd=REPO,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )

        async def some_pages_done() -> bool:
            found = rows(pipeline, "select run from backfill_cursors where scope = 'project:FLOW'")
            return bool(
                found
                and found[0][0]
                and found[0][0]["position"].get("after_key")
                and int(found[0][0]["position"]["after_key"].split("-")[1]) >= 30
            )

        await wait_for(some_pages_done, timeout=60, what="the first run to get going")
        first.send_signal(signal.SIGKILL)
        assert await first.wait() == -signal.SIGKILL
        (run,) = rows(pipeline, "select run from backfill_cursors where scope = 'project:FLOW'")
        assert run[0] is not None, "the first run finished before it was killed"
        stopped_at = run[0]["position"]["after_key"]
        assert stopped_at != "FLOW-120"
        fake.served.clear()

        faults.changelog_latency_s = 0.0
        second = await asyncio.create_subprocess_exec(
            *argv, cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(second.communicate(), timeout=120)
        assert second.returncode == 0, err.decode()[-3000:]
        first_jql = fake.requests("/search/jql")[0].query["jql"]
    assert f'issuekey > "{stopped_at}"' in first_jql
    assert b"resume" in out
    await pipeline.settle(timeout=60)

    by_item = transitions_by_item(pipeline)
    assert len(by_item) == 120
    assert all(len(v) == 3 and len({e for e, *_ in v}) == 3 for v in by_item.values())
    (dupes,) = rows(pipeline, "select count(*) - count(distinct event_id) from events")
    assert dupes == (0,)
    for key in ("FLOW-1", stopped_at, "FLOW-120"):
        history = await pipeline.get(f"/api/v1/work-items/{key}/history")
        assert [t["to_status"] for t in history["transitions"]] == ["To Do", "In Progress", "Done"]
    watermark, run_after, items_total, _ = cursor_row(pipeline, "project:FLOW")
    assert run_after is None and watermark is not None and items_total >= 120
