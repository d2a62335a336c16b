"""GitHub REST objects → canonical events with the ids of the recorded webhooks."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from collectors.backfill.github_mapping import (
    commit_events,
    deployment_events,
    deployment_settled,
    issue_events,
    next_link,
    pull_request_events,
    workflow_run_events,
)
from collectors.github import GitHubMapping, normalize_github
from schemas.events import CanonicalEvent, PullRequestEvent
from tests.fixtures import load_fixture

RECEIVED = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
MAPPING = GitHubMapping()


def webhook(
    event: str, fixture: str, edit: Any = None, mapping: GitHubMapping = MAPPING
) -> tuple[dict[str, Any], list[CanonicalEvent]]:
    body = load_fixture(f"github/{fixture}")
    if edit is not None:
        edit(body)
    result = normalize_github(event, "d-1", body, received_at=RECEIVED, mapping=mapping)
    return body, list(result.events)


def ids(events: list[CanonicalEvent], *types: str) -> set[str]:
    return {e.event_id for e in events if not types or e.type in types}


def test_an_open_pull_request_backfills_the_opened_webhooks_events() -> None:
    """opened: upsert, transition and pull_request.opened all share the webhook's ids."""
    body, hooked = webhook("pull_request", "pull_request/opened.json")
    ours = pull_request_events(
        "Codertocat/Hello-World", body["pull_request"], received_at=RECEIVED, mapping=MAPPING
    )
    assert ids(hooked) <= ids(ours)
    assert {e.type for e in ours} == {
        "work_item.upserted",
        "work_item.transitioned",
        "pull_request.opened",
    }


def test_a_merged_pull_request_backfills_the_merge_with_its_commits() -> None:
    """closed+merged: the webhook's merge ids, plus the PR's commit SHAs when listed."""
    body, hooked = webhook("pull_request", "pull_request/closed_merged.json")
    pr = {k: v for k, v in body["pull_request"].items() if k != "merged"}  # a list item
    ours = pull_request_events(
        "sish8075/statistics-source",
        pr,
        (),
        ("a" * 40, "b" * 40),
        received_at=RECEIVED,
        mapping=MAPPING,
    )
    assert ids(hooked) <= ids(ours)
    (merged,) = [e for e in ours if e.type == "pull_request.merged"]
    assert isinstance(merged, PullRequestEvent)
    assert merged.merge_commit_sha == "18936fb4b760b985e35fae9aa953a349703a4c53"
    assert merged.commit_shas == ("a" * 40, "b" * 40)
    steps = sorted((e.occurred_at, e.to_stage) for e in ours if e.type == "work_item.transitioned")
    assert [stage for _, stage in steps] == ["Development", "Production"]


def test_a_pull_request_closed_unmerged_backfills_the_close() -> None:
    """closed without merge: the webhook's close ids (at closed_at)."""
    body, hooked = webhook("pull_request", "pull_request/closed.json")
    ours = pull_request_events(
        "Codertocat/Hello-World", body["pull_request"], received_at=RECEIVED, mapping=MAPPING
    )
    assert ids(hooked) <= ids(ours)


def test_reviews_backfill_with_the_review_ids() -> None:
    """A submitted review is identified by its review id, as in the webhook."""
    body, hooked = webhook("pull_request_review", "pull_request_review/submitted.json")
    pending = {**body["review"], "id": 1, "state": "PENDING", "submitted_at": None}
    ours = pull_request_events(
        "Codertocat/Hello-World",
        body["pull_request"],
        [body["review"], pending],
        received_at=RECEIVED,
        mapping=MAPPING,
    )
    assert ids(hooked) <= ids(ours)
    assert len([e for e in ours if e.type == "pull_request.reviewed"]) == 1


def test_issues_backfill_their_opening_and_closing() -> None:
    """Work-item issues: opened (at created_at) and closed (at closed_at) ids match."""
    opened_body, opened = webhook("issues", "issues/opened.json")
    ours = issue_events(
        "Codertocat/Hello-World", opened_body["issue"], received_at=RECEIVED, mapping=MAPPING
    )
    assert ids(opened, "work_item.transitioned") <= ids(ours)
    closed_body, closed = webhook("issues", "issues/closed.json")
    ours = issue_events(
        "codinasion/codinasion-bot", closed_body["issue"], received_at=RECEIVED, mapping=MAPPING
    )
    assert ids(closed) <= ids(ours)


def test_incident_issues_backfill_as_incidents() -> None:
    """An issue labelled as an incident is opened and resolved as the webhook would."""

    def label(body: dict[str, Any]) -> None:
        body["issue"]["labels"].append({"name": "incident"})

    body, hooked = webhook("issues", "issues/opened.json", label)
    closed = {
        **copy.deepcopy(body["issue"]),
        "state": "closed",
        "closed_at": "2019-05-15T16:00:00Z",
    }
    ours = issue_events("Codertocat/Hello-World", closed, received_at=RECEIVED, mapping=MAPPING)
    assert ids(hooked) <= ids(ours)
    assert {e.type for e in ours} == {"incident.opened", "incident.resolved"}


def test_the_head_commit_of_a_push_backfills_with_the_push_id() -> None:
    """A commit that headed its push gets the webhook's id (one-commit push here)."""
    body, hooked = webhook("push", "push/branch_push.json")
    pushed = body["commits"][0]
    rest = {
        "sha": pushed["id"],
        "commit": {
            "author": {"name": "Mikko Kurkela", "email": "x@y", "date": pushed["timestamp"]},
            "committer": {"name": "Mikko Kurkela", "email": "x@y", "date": pushed["timestamp"]},
            "message": pushed["message"],
        },
        "author": {"login": "devolution-roster-test"},
        "parents": [{"sha": body["before"]}],
    }
    ours = commit_events(
        "Devolution-Oy/tasker-issue-test", "master", rest, received_at=RECEIVED, mapping=MAPPING
    )
    assert ids(hooked) == ids(ours)
    (commit,) = ours
    assert commit.model_dump(exclude={"received_at"}) == hooked[0].model_dump(
        exclude={"received_at"}
    )


def test_deployments_and_statuses_backfill_with_their_ids() -> None:
    """deployment by id, each status by its id; a final state settles the deployment."""
    created_body, created = webhook("deployment", "deployment/created.json")
    assert ids(created) == ids(
        deployment_events(
            "Codertocat/Hello-World",
            created_body["deployment"],
            [],
            received_at=RECEIVED,
            mapping=MAPPING,
        )
    )
    body, status = webhook("deployment_status", "deployment_status/created_success.json")
    ours = deployment_events(
        "Codertocat/Hello-World",
        body["deployment"],
        [body["deployment_status"]],
        received_at=RECEIVED,
        mapping=MAPPING,
    )
    assert ids(status) <= ids(ours)
    assert len(ours) == 2
    assert deployment_settled([body["deployment_status"]])
    assert not deployment_settled([{**body["deployment_status"], "state": "in_progress"}])
    assert not deployment_settled([])


def test_completed_deploy_runs_backfill_and_others_do_not() -> None:
    """Completed runs of the deploy workflow, by run id and attempt; in-flight runs: none."""
    mapping = GitHubMapping(deploy_workflow_pattern="")
    body, hooked = webhook("workflow_run", "workflow_run/completed.json", mapping=mapping)
    ours = workflow_run_events(
        "octo-org/octo-repo", body["workflow_run"], received_at=RECEIVED, mapping=mapping
    )
    assert ids(hooked) == ids(ours) and ours
    running = {**body["workflow_run"], "status": "in_progress", "conclusion": None}
    assert (
        workflow_run_events("octo-org/octo-repo", running, received_at=RECEIVED, mapping=mapping)
        == []
    )
    assert (
        workflow_run_events(
            "octo-org/octo-repo", body["workflow_run"], received_at=RECEIVED, mapping=MAPPING
        )
        == []
    )


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            '<https://x/y?page=2>; rel="next", <https://x/y?page=9>; rel="last"',
            "https://x/y?page=2",
        ),
        ('<https://x/y?page=1>; rel="prev"', None),
        (None, None),
    ],
)
def test_next_link(header: str | None, expected: str | None) -> None:
    """The rel="next" URL of a Link header, when there is one."""
    assert next_link(header) == expected
