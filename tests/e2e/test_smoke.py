"""Smoke: a signed Jira webhook in, numbers out of the API."""

from __future__ import annotations

import pytest

from tests.fixtures import fixtures_dir
from tests.pipeline import Pipeline

pytestmark = pytest.mark.e2e


async def test_created_issue_shows_up_as_a_work_item(pipeline: Pipeline) -> None:
    """A signed issue_created delivery becomes a work item readable from the API."""
    body = (fixtures_dir() / "jira/issue_created/cloud_TES-41_created.json").read_bytes()
    response = await pipeline.post_jira(body, delivery_id="smoke-1")
    assert response.status_code == 202, response.text
    await pipeline.settle()
    page = await pipeline.get("/api/v1/work-items")
    assert [i["display_key"] for i in page["items"]] == ["TES-41"]
    history = await pipeline.get("/api/v1/work-items/TES-41/history")
    assert history["item"]["stage"] == "Backlog"


async def test_prometheus_exposes_wip_by_stage(pipeline: Pipeline) -> None:
    """/metrics carries WIP by stage and the cycle-time buckets, read from the database."""
    for name in (
        "issue_created/cloud_TES-41_created.json",
        "issue_updated/cloud_TES-41_status_todo_to_inprogress.json",
    ):
        body = (fixtures_dir() / "jira" / name).read_bytes()
        assert (await pipeline.post_jira(body, delivery_id=name)).status_code == 202
    await pipeline.settle()
    text = (await pipeline.api.get("/metrics")).text
    assert 'flowmetrics_wip_items{stage="Development"} 1.0' in text
    assert 'flowmetrics_cycle_time_hours_bucket{le="+Inf"} 0.0' in text
