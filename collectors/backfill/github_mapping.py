"""GitHub REST objects → canonical events. Pure: no I/O.

The REST API returns the very objects webhooks carry (``pull_request``,
``issue``, ``deployment``, ``deployment_status``, ``workflow_run``), so each
object is wrapped in the webhook delivery that would have announced the change
and run through :func:`collectors.github.normalize_github`. Event ids are then
the webhook path's by construction:

====================================  ===================================================
REST object                           synthetic delivery (event ids as the webhook's)
====================================  ===================================================
pull request                          ``opened`` (at ``created_at``); ``closed`` merged (at
                                      ``merged_at``, with the PR's commit SHAs) or closed
                                      unmerged (at ``closed_at``); ``edited`` (a snapshot
                                      upsert at ``updated_at``)
review (``submitted_at`` set)         ``pull_request_review`` ``submitted`` (by review id)
issue / incident                      ``opened``; ``closed`` when closed; ``edited``
commit on the default branch          a one-commit ``push`` whose head is the commit
deployment + each status              ``deployment`` ``created``; ``deployment_status``
                                      ``created`` (by deployment / status id)
completed workflow run                ``workflow_run`` ``completed`` (run id, attempt)
====================================  ===================================================

What a backfill cannot reproduce, and so does not emit: ``ready_for_review``,
``review_requested`` and ``reopened`` steps, whose webhook ids use the
object's ``updated_at`` at delivery time, which the REST API has since
overwritten. A commit's webhook id includes the head of the push it came in;
the API does not keep pushes, so a backfilled commit is its own head and only
matches the webhook's id when it was the head of its push (see docs/backfill.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from collectors.github import GitHubMapping, GitHubPayloadError, normalize_github
from schemas.events import CanonicalEvent, PullRequestEvent

DELIVERY_ID = "rest-backfill"
_ZERO_SHA = "0" * 40
_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="([^"]+)"')


def next_link(header: str | None) -> str | None:
    """The ``rel="next"`` URL of a ``Link`` header."""
    for url, rel in _LINK.findall(header or ""):
        if "next" in rel.split():
            return str(url)
    return None


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def is_pull_request(issue: dict[str, Any]) -> bool:
    """The issues listing returns pull requests too, marked by a ``pull_request`` key."""
    return isinstance(issue.get("pull_request"), dict)


def _deliver(
    event: str,
    body: dict[str, Any],
    repo: str,
    *,
    received_at: datetime,
    mapping: GitHubMapping,
) -> list[CanonicalEvent]:
    payload = {**body, "repository": {"full_name": repo}}
    normalized = normalize_github(
        event, DELIVERY_ID, payload, received_at=received_at, mapping=mapping
    )
    return list(normalized.events)


def _unique(events: Iterable[CanonicalEvent]) -> list[CanonicalEvent]:
    seen: dict[str, CanonicalEvent] = {}
    for event in events:
        seen.setdefault(event.event_id, event)
    return list(seen.values())


def pull_request_events(
    repo: str,
    pr: dict[str, Any],
    reviews: Sequence[dict[str, Any]] = (),
    commit_shas: Sequence[str] = (),
    *,
    received_at: datetime,
    mapping: GitHubMapping,
) -> list[CanonicalEvent]:
    """A pull request (``GET /pulls/{n}``), its reviews and, when merged, its commits."""
    merged = pr.get("merged_at") is not None
    now = {**pr, "merged": merged}

    def deliver(event: str, body: dict[str, Any]) -> list[CanonicalEvent]:
        return _deliver(event, body, repo, received_at=received_at, mapping=mapping)

    as_opened = {**pr, "state": "open", "merged": False, "merged_at": None, "closed_at": None}
    events = deliver("pull_request", {"action": "opened", "pull_request": as_opened})
    if merged or pr.get("state") == "closed":
        closed = deliver("pull_request", {"action": "closed", "pull_request": now})
        if merged and commit_shas:
            closed = [
                e.model_copy(update={"commit_shas": tuple(commit_shas)})
                if isinstance(e, PullRequestEvent) and e.type == "pull_request.merged"
                else e
                for e in closed
            ]
        events += closed
    for review in reviews:
        if review.get("submitted_at") and str(review.get("state", "")).upper() != "PENDING":
            events += deliver(
                "pull_request_review",
                {"action": "submitted", "pull_request": now, "review": review},
            )
    events += deliver("pull_request", {"action": "edited", "pull_request": now})
    return _unique(events)


def issue_events(
    repo: str, issue: dict[str, Any], *, received_at: datetime, mapping: GitHubMapping
) -> list[CanonicalEvent]:
    """An issue (not a pull request): a work item, or an incident when so labelled."""

    def deliver(action: str, body: dict[str, Any]) -> list[CanonicalEvent]:
        return _deliver(
            "issues",
            {"action": action, "issue": body},
            repo,
            received_at=received_at,
            mapping=mapping,
        )

    events = deliver("opened", {**issue, "state": "open", "closed_at": None, "state_reason": None})
    if issue.get("state") == "closed" and issue.get("closed_at"):
        events += deliver("closed", issue)
    events += deliver("edited", issue)
    return _unique(events)


def commit_events(
    repo: str,
    branch: str,
    commit: dict[str, Any],
    *,
    received_at: datetime,
    mapping: GitHubMapping,
) -> list[CanonicalEvent]:
    """A commit of ``GET /commits`` as the head of a one-commit push to ``branch``."""
    sha = commit.get("sha")
    detail = commit.get("commit")
    if not isinstance(sha, str) or not sha:
        raise GitHubPayloadError("commit.sha", "missing")
    if not isinstance(detail, dict):
        raise GitHubPayloadError("commit.commit", "missing")
    author = _obj(detail.get("author"))
    committer = _obj(detail.get("committer"))
    user = _obj(commit.get("author"))
    parents = commit.get("parents") if isinstance(commit.get("parents"), list) else []
    parent = _obj(parents[0]).get("sha") if parents else None
    push = {
        "ref": f"refs/heads/{branch}",
        "after": sha,
        "before": parent or _ZERO_SHA,
        "created": False,
        "deleted": False,
        "forced": False,
        "commits": [
            {
                "id": sha,
                "message": detail.get("message") or "",
                "timestamp": committer.get("date") or author.get("date"),
                "author": {
                    "name": author.get("name"),
                    "email": author.get("email"),
                    "date": author.get("date"),
                    "username": user.get("login"),
                },
                "committer": {
                    "name": committer.get("name"),
                    "email": committer.get("email"),
                    "date": committer.get("date"),
                },
            }
        ],
    }
    return _deliver("push", push, repo, received_at=received_at, mapping=mapping)


def deployment_events(
    repo: str,
    deployment: dict[str, Any],
    statuses: Sequence[dict[str, Any]],
    *,
    received_at: datetime,
    mapping: GitHubMapping,
) -> list[CanonicalEvent]:
    """A deployment and every status it went through."""
    events = _deliver(
        "deployment",
        {"action": "created", "deployment": deployment},
        repo,
        received_at=received_at,
        mapping=mapping,
    )
    for status in statuses:
        events += _deliver(
            "deployment_status",
            {"action": "created", "deployment_status": status, "deployment": deployment},
            repo,
            received_at=received_at,
            mapping=mapping,
        )
    return _unique(events)


def workflow_run_events(
    repo: str, run: dict[str, Any], *, received_at: datetime, mapping: GitHubMapping
) -> list[CanonicalEvent]:
    """A workflow run; only completed runs of a deploy workflow are deployments."""
    if run.get("status") != "completed":
        return []
    return _deliver(
        "workflow_run",
        {"action": "completed", "workflow_run": run},
        repo,
        received_at=received_at,
        mapping=mapping,
    )


TERMINAL_DEPLOYMENT_STATES = frozenset({"success", "failure", "error", "inactive"})


def deployment_settled(statuses: Sequence[dict[str, Any]]) -> bool:
    """Whether a deployment reached a final state (no more statuses expected soon).
    Statuses are listed newest first."""
    return bool(statuses) and statuses[0].get("state") in TERMINAL_DEPLOYMENT_STATES
