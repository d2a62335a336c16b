"""GitHub webhook deliveries → canonical events. Pure: no I/O, no clock, no state.

:func:`normalize_github` takes the event name (the ``X-GitHub-Event`` header), the
delivery id and the parsed body, and returns the canonical events the delivery
implies, or the reason it implies none (``GitHubNormalized.ignored``).

Event ids come from the change itself (commit sha and push head, PR number and
time, deployment/status/run/review ids), never from the delivery id, so a
redelivery and a later backfill of the same change fold once. Timestamps in ids
are UTC ISO strings, so ``Z`` and ``+03:00`` spellings of one instant agree.

Every ``pull_request`` and work-item ``issues`` delivery also carries a
``work_item.upserted`` snapshot: the first delivery seen for an item may be any
action (webhook installed mid-life), and the item must exist to be folded.
Issues labelled ``GitHubMapping.incident_label`` are incidents, not work items.

Exceptions::

    ValueError
    └── GitHubPayloadError   a field we need is missing or malformed (``.field``)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from schemas.events import (
    CanonicalEvent,
    ChangeCommitted,
    DeploymentRecorded,
    DeploymentStatus,
    IncidentOpened,
    IncidentResolved,
    PullRequestEvent,
    WorkItemDeleted,
    WorkItemTransitioned,
    WorkItemUpserted,
    stable_event_id,
)
from schemas.topics import partition_key

SOURCE = "github"
_ZERO_SHA = "0" * 40

# GitHub deployment_status.state → contract status. "waiting" (environment
# protection rules) has no contract value; it has not started, so "pending".
_DEPLOYMENT_STATES: dict[str, DeploymentStatus] = {
    "pending": "pending",
    "waiting": "pending",
    "queued": "queued",
    "in_progress": "in_progress",
    "success": "success",
    "failure": "failure",
    "error": "error",
    "inactive": "inactive",
}
_TERMINAL: frozenset[str] = frozenset({"success", "failure", "error"})
# workflow_run conclusions that say a deployment ran and failed; cancelled,
# skipped, neutral, stale and action_required runs never deployed.
_RUN_FAILED = frozenset({"failure", "timed_out", "startup_failure"})
# Issues closed as not done leave the flow rather than complete it.
_ISSUE_NOT_DONE = frozenset({"not_planned", "duplicate"})

_ROOT_CAUSE = re.compile(r"root[ _-]?cause\s*:\s*`?([0-9a-f]{7,40})(?![0-9a-z])", re.I)
_DEPLOYMENT_URL = re.compile(r"https?://[^\s<>()\[\]\"'`]+/deployments/\d+")


class GitHubPayloadError(ValueError):
    """The body lacks a field the normalizer needs, or the field has the wrong shape."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"github payload field {field!r}: {problem}")
        self.field = field


@dataclass(frozen=True)
class GitHubMapping:
    """How GitHub concepts map onto flowmetrics ones (from configuration)."""

    incident_label: str = "incident"
    # workflow_run names (or, when the run has none, workflow names) that deploy.
    # Off by default: a broad default such as "deploy" also matches GitHub's own
    # "pages build and deployment" run, and a workflow that creates a GitHub
    # deployment would be counted twice (its run and its deployment_status).
    deploy_workflow_pattern: str | None = None
    workflow_environment: str = "production"
    # repository full_name → service; unmapped repositories are their own service.
    service_for_repo: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.deploy_workflow_pattern is not None:
            re.compile(self.deploy_workflow_pattern)  # a bad pattern fails at start-up

    def service(self, repo: str) -> str:
        return self.service_for_repo.get(repo, repo)


@dataclass(frozen=True)
class GitHubNormalized:
    """The canonical events of one delivery; ``ignored`` says why there are none."""

    events: tuple[CanonicalEvent, ...] = ()
    ignored: str | None = None


def normalize_github(
    event_name: str,
    delivery_id: str,
    body: dict[str, Any],
    *,
    received_at: datetime,
    mapping: GitHubMapping,
) -> GitHubNormalized:
    """Map one GitHub delivery to canonical events (raises :class:`GitHubPayloadError`).

    ``delivery_id`` is accepted for the caller's symmetry with the raw topic; event
    ids deliberately do not depend on it (see the module docstring).
    """
    if received_at.tzinfo is None:
        raise ValueError("received_at must be timezone-aware")
    if event_name == "ping":
        return _ignore("ping")
    handler = _HANDLERS.get(event_name)
    if handler is None:
        return _ignore(f"event {event_name!r} is not used")
    fields = _Fields(body, "")
    repo = fields.obj("repository").text("full_name")
    return handler(_Delivery(event_name, fields, repo, received_at, mapping))


def _ignore(reason: str) -> GitHubNormalized:
    return GitHubNormalized(events=(), ignored=reason)


def _emit(*events: CanonicalEvent) -> GitHubNormalized:
    return GitHubNormalized(events=events)


class _Fields:
    """A JSON object and its path in the body, so that errors name the field."""

    __slots__ = ("_data", "_path")

    def __init__(self, data: object, path: str) -> None:
        if not isinstance(data, dict):
            raise GitHubPayloadError(path or "body", "expected an object")
        self._data: dict[str, Any] = data
        self._path = path

    def name(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def raw(self, key: str) -> Any:
        return self._data.get(key)

    def obj(self, key: str) -> _Fields:
        if self._data.get(key) is None:
            raise GitHubPayloadError(self.name(key), "missing")
        return _Fields(self._data[key], self.name(key))

    def opt_obj(self, key: str) -> _Fields | None:
        return None if self._data.get(key) is None else self.obj(key)

    def objs(self, key: str) -> list[_Fields]:
        """A list of objects; absent or null reads as empty."""
        value = self._data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise GitHubPayloadError(self.name(key), "expected a list")
        return [_Fields(item, f"{self.name(key)}[{i}]") for i, item in enumerate(value)]

    def opt_text(self, key: str) -> str | None:
        value = self._data.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise GitHubPayloadError(self.name(key), f"expected a string, got {value!r}")
        return value

    def text(self, key: str) -> str:
        value = self.opt_text(key)
        if value is None:
            raise GitHubPayloadError(self.name(key), "missing")
        return value

    def integer(self, key: str) -> int:
        value = self._data.get(key)
        if value is None:
            raise GitHubPayloadError(self.name(key), "missing")
        if not isinstance(value, int) or isinstance(value, bool):
            raise GitHubPayloadError(self.name(key), f"expected an integer, got {value!r}")
        return value

    def flag(self, key: str) -> bool:
        return self._data.get(key) is True

    def opt_when(self, key: str) -> datetime | None:
        value = self.opt_text(key)
        if value is None:
            return None
        try:
            ts = datetime.fromisoformat(value)
        except ValueError:
            raise GitHubPayloadError(self.name(key), f"not an ISO-8601 time: {value!r}") from None
        if ts.tzinfo is None:
            raise GitHubPayloadError(self.name(key), f"time without UTC offset: {value!r}")
        return ts

    def when(self, key: str) -> datetime:
        ts = self.opt_when(key)
        if ts is None:
            raise GitHubPayloadError(self.name(key), "missing")
        return ts

    def login(self, key: str) -> str | None:
        user = self.opt_obj(key)
        return None if user is None else user.opt_text("login")

    def label_names(self) -> tuple[str, ...]:
        return tuple(label.text("name") for label in self.objs("labels"))


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat()


_E = TypeVar("_E", bound=BaseModel)


@dataclass(frozen=True)
class _Delivery:
    event_name: str
    body: _Fields
    repo: str
    received_at: datetime
    mapping: GitHubMapping

    @property
    def action(self) -> str:
        return self.body.text("action")

    def unused_action(self) -> GitHubNormalized:
        return _ignore(f"{self.event_name} action {self.action!r} is not used")

    def event(self, model: type[_E], ids: tuple[object, ...], at: datetime, **data: Any) -> _E:
        """Build a canonical event: id from ``(source, repo, *ids)``, key by the key rule."""
        try:
            draft = model(
                event_id=stable_event_id(SOURCE, self.repo, *ids),
                source=SOURCE,
                occurred_at=at,
                received_at=self.received_at,
                key="-",  # replaced below: the key rule needs the event itself
                **data,
            )
        except ValidationError as exc:
            error = exc.errors()[0]
            loc = ".".join(str(part) for part in error["loc"])
            raise GitHubPayloadError(f"{model.__name__}.{loc}", error["msg"]) from exc
        return draft.model_copy(update={"key": partition_key(draft)})


# --- push -------------------------------------------------------------------------


def _push(d: _Delivery) -> GitHubNormalized:
    ref, after = d.body.text("ref"), d.body.text("after")
    if d.body.flag("deleted") or after == _ZERO_SHA:
        return _ignore(f"push deletes {ref}")
    if ref.startswith("refs/tags/"):
        return _ignore(f"tag push {ref}")
    if not ref.startswith("refs/heads/"):
        return _ignore(f"push to {ref} is not a branch")
    branch = ref.removeprefix("refs/heads/")
    commits = d.body.objs("commits")
    if not commits:
        return _ignore(f"push to {branch} carries no commits")
    before = d.body.opt_text("before")
    before_sha = None if before in (None, _ZERO_SHA) else before
    # After a force push `before` is the replaced head, not an ancestor.
    forced = d.body.flag("forced")
    return _emit(*(_commit(d, c, branch, after, before_sha, forced) for c in commits))


def _commit(
    d: _Delivery,
    commit: _Fields,
    branch: str,
    head_sha: str,
    before_sha: str | None,
    forced: bool,
) -> ChangeCommitted:
    sha = commit.text("id")
    author, committer = commit.opt_obj("author"), commit.opt_obj("committer")
    # Push payloads carry one `timestamp`; API-shaped commits carry both dates.
    stamp = commit.opt_when("timestamp")
    authored = (author.opt_when("date") if author else None) or stamp
    committed = (committer.opt_when("date") if committer else None) or stamp
    if authored is None or committed is None:
        raise GitHubPayloadError(commit.name("timestamp"), "missing")
    return d.event(
        ChangeCommitted,
        ("commit", sha, head_sha),
        committed,
        repo=d.repo,
        sha=sha,
        authored_at=authored,
        committed_at=committed,
        branch=branch,
        head_sha=head_sha,
        before_sha=before_sha,
        forced=forced,
        author=(author.opt_text("username") or author.opt_text("name")) if author else None,
        message=commit.opt_text("message") or "",
    )


# --- work items: pull requests and issues -----------------------------------------


@dataclass(frozen=True)
class _WorkItem:
    """A PR or issue delivery as a work item: its snapshot and, if it moved, its step."""

    d: _Delivery
    obj: _Fields
    tag: str  # "pr" | "issue": keeps the id spaces of the two kinds apart
    item_type: str
    item_id: str
    number: int
    occurred: datetime

    def events(self, status: str, step: tuple[str, str, str] | None) -> list[CanonicalEvent]:
        """The upsert, then the transition if ``step`` = (kind, to_stage, to_status)."""
        d, at = self.d, self.occurred
        upsert_ids = (f"{self.tag}-upsert", self.number, d.action, _action_detail(d.body))
        upsert = d.event(
            WorkItemUpserted,
            (*upsert_ids, _iso(at)),
            at,
            item_id=self.item_id,
            display_key=f"{d.repo}#{self.number}",
            title=self.obj.opt_text("title") or "",
            item_type=self.item_type,
            project=d.repo,
            team=d.repo,
            status=status,
            assignee=self.obj.login("assignee"),
            labels=self.obj.label_names(),
            created_at=self.obj.when("created_at"),
            url=self.obj.opt_text("html_url"),
        )
        if step is None:
            return [upsert]
        kind, to_stage, to_status = step
        transition = d.event(
            WorkItemTransitioned,
            (f"{self.tag}-transition", self.number, kind, to_stage, _iso(at)),
            at,
            item_id=self.item_id,
            to_status=to_status,
            to_stage=to_stage,
        )
        return [upsert, transition]


def _action_detail(body: _Fields) -> str:
    """What distinguishes two same-second deliveries of one action (label, person)."""
    label = body.opt_obj("label")
    if label is not None:
        return label.opt_text("name") or ""
    team = body.opt_obj("requested_team")
    return (
        body.login("assignee")
        or body.login("requested_reviewer")
        or (team.opt_text("name") if team else None)
        or ""
    )


def _pull_request(d: _Delivery) -> GitHubNormalized:
    action, pr = d.action, d.body.obj("pull_request")
    number = pr.integer("number")
    item_id = f"github:{d.repo}#{number}"
    merged = action == "closed" and pr.flag("merged")
    occurred = _pr_occurred_at(pr, action, merged)
    status = "merged" if pr.flag("merged") else pr.text("state")
    step = _pr_step(action, merged, draft=pr.flag("draft"))
    item = _WorkItem(d, pr, "pr", "pull_request", item_id, number, occurred)
    if step is None:
        return _emit(*item.events(status, None))
    kind = step[0]
    pr_event = _pr_event(d, pr, kind, number, ("pr", number, kind, _iso(occurred)), occurred)
    return _emit(*item.events(status, step), pr_event)


def _pr_occurred_at(pr: _Fields, action: str, merged: bool) -> datetime:
    """When the action happened. An opening is its creation (a backfill sees the
    same time, so ids agree); other actions are the snapshot's last update."""
    if action == "opened":
        return pr.when("created_at")
    if action == "closed":
        return pr.when("merged_at") if merged else pr.when("closed_at")
    return pr.when("updated_at")


def _pr_step(action: str, merged: bool, *, draft: bool) -> tuple[str, str, str] | None:
    """(pull_request.<kind>, to_stage, to_status) for actions that move the PR."""
    if action in ("opened", "reopened"):
        return action, "Development", "open"  # a draft is in Development too
    if action == "ready_for_review" or (action == "review_requested" and not draft):
        return "ready", "Testing", "in review"
    if action == "closed":
        return ("merged", "Production", "merged") if merged else ("closed", "Removed", "closed")
    return None


def _pr_event(
    d: _Delivery,
    pr: _Fields,
    kind: str,
    number: int,
    id_parts: tuple[object, ...],
    occurred: datetime,
) -> PullRequestEvent:
    merged = kind == "merged"
    head, base = pr.opt_obj("head"), pr.opt_obj("base")
    return d.event(
        PullRequestEvent,
        id_parts,
        occurred,
        type=f"pull_request.{kind}",
        repo=d.repo,
        number=number,
        item_id=f"github:{d.repo}#{number}",
        title=pr.opt_text("title") or "",
        head_sha=head.opt_text("sha") if head else None,
        # GitHub fills merge_commit_sha with a test merge on open PRs: only a
        # merged PR's is a real commit.
        merge_commit_sha=pr.text("merge_commit_sha") if merged else None,
        base_branch=base.opt_text("ref") if base else None,
        created_at=pr.when("created_at"),
        merged_at=pr.when("merged_at") if merged else None,
        author=pr.login("user"),
    )


def _pull_request_review(d: _Delivery) -> GitHubNormalized:
    if d.action != "submitted":
        return _ignore(f"pull_request_review {d.action!r} is not a review")
    pr, review = d.body.obj("pull_request"), d.body.obj("review")
    number = pr.integer("number")
    # The review id, not its time: two reviews can land in the same second.
    id_parts = ("pr", number, "reviewed", review.integer("id"))
    return _emit(_pr_event(d, pr, "reviewed", number, id_parts, review.when("submitted_at")))


# --- deployments ------------------------------------------------------------------


def _rollback_of(repo: str, deployment: _Fields) -> str | None:
    """Our convention: ``payload.rollback_of`` names the GitHub deployment rolled back."""
    payload = deployment.raw("payload")
    target = payload.get("rollback_of") if isinstance(payload, dict) else None
    if isinstance(target, int) and not isinstance(target, bool):
        return f"{repo}:{target}"
    if isinstance(target, str) and target.strip():
        target = target.strip()
        return f"{repo}:{target}" if target.isdigit() else target
    return None


def _deployment_fields(d: _Delivery, deployment: _Fields) -> dict[str, Any]:
    return {
        "deployment_id": f"{d.repo}:{deployment.integer('id')}",
        "repo": d.repo,
        "service": d.mapping.service(d.repo),
        "environment": deployment.text("environment"),
        "sha": deployment.text("sha"),
        "started_at": deployment.when("created_at"),
        "url": deployment.opt_text("url"),
        "rollback_of": _rollback_of(d.repo, deployment),
    }


def _deployment(d: _Delivery) -> GitHubNormalized:
    if d.action != "created":
        return d.unused_action()
    deployment = d.body.obj("deployment")
    fields = _deployment_fields(d, deployment)
    ids = ("deployment", deployment.integer("id"))
    return _emit(d.event(DeploymentRecorded, ids, fields["started_at"], status="pending", **fields))


def _deployment_status(d: _Delivery) -> GitHubNormalized:
    if d.action != "created":
        return d.unused_action()
    status = d.body.obj("deployment_status")
    state = status.text("state")
    if state not in _DEPLOYMENT_STATES:
        raise GitHubPayloadError(status.name("state"), f"unknown state {state!r}")
    at = status.when("created_at")
    canonical = _DEPLOYMENT_STATES[state]
    return _emit(
        d.event(
            DeploymentRecorded,
            ("deployment_status", status.integer("id")),
            at,
            status=canonical,
            finished_at=at if canonical in _TERMINAL else None,
            **_deployment_fields(d, d.body.obj("deployment")),
        )
    )


def _workflow_run(d: _Delivery) -> GitHubNormalized:
    if d.action != "completed":
        return _ignore(f"workflow_run {d.action!r}: only completed runs are deployments")
    run, workflow = d.body.obj("workflow_run"), d.body.opt_obj("workflow")
    name = run.opt_text("name") or (workflow.opt_text("name") if workflow else None) or ""
    pattern = d.mapping.deploy_workflow_pattern
    if pattern is None:
        return _ignore("workflow runs are not deployments (no deploy workflow pattern is set)")
    if not re.search(pattern, name):
        return _ignore(f"workflow {name!r} does not match the deploy workflow pattern")
    conclusion = run.opt_text("conclusion")
    if conclusion != "success" and conclusion not in _RUN_FAILED:
        return _ignore(f"deploy workflow run concluded {conclusion!r}: nothing was deployed")
    run_id = run.integer("id")
    attempt = run.raw("run_attempt")
    attempt = attempt if isinstance(attempt, int) and attempt > 1 else 1
    # A re-run is a new deployment attempt: keep a failed first attempt counted.
    suffix = f":attempt:{attempt}" if attempt > 1 else ""
    finished = run.when("updated_at")
    return _emit(
        d.event(
            DeploymentRecorded,
            ("workflow_run", run_id, attempt),
            finished,
            deployment_id=f"{d.repo}:run:{run_id}{suffix}",
            repo=d.repo,
            service=d.mapping.service(d.repo),
            environment=d.mapping.workflow_environment,
            status="success" if conclusion == "success" else "failure",
            sha=run.text("head_sha"),
            started_at=run.opt_when("run_started_at") or run.when("created_at"),
            finished_at=finished,
            url=run.opt_text("html_url"),
        )
    )


# --- issues: incidents and work items ---------------------------------------------


def _issues(d: _Delivery) -> GitHubNormalized:
    issue = d.body.obj("issue")
    wanted = d.mapping.incident_label.casefold()
    if any(name.casefold() == wanted for name in issue.label_names()):
        return _incident(d, issue, wanted)
    return _issue_work_item(d, issue)


def _incident(d: _Delivery, issue: _Fields, wanted: str) -> GitHubNormalized:
    action, number = d.action, issue.integer("number")
    incident_id, service = f"{d.repo}#{number}", d.mapping.service(d.repo)
    if action == "closed":
        resolved = issue.when("closed_at")
        return _emit(
            d.event(
                IncidentResolved,
                ("incident", number, "resolved", _iso(resolved)),
                resolved,
                incident_id=incident_id,
                service=service,
                resolved_at=resolved,
            )
        )
    label = d.body.opt_obj("label")
    label_name = (label.opt_text("name") or "") if label else ""
    if action == "labeled" and label_name.casefold() != wanted:
        return _ignore(f"incident issue labeled {label_name!r}: not an incident change")
    if action not in ("opened", "reopened", "labeled"):
        return _ignore(f"incident issue action {action!r} is not tracked")
    opened_at = issue.when("created_at")
    occurred = opened_at if action == "opened" else issue.when("updated_at")
    text = issue.opt_text("body") or ""
    root_cause, deployment_url = _ROOT_CAUSE.search(text), _DEPLOYMENT_URL.search(text)
    return _emit(
        d.event(
            IncidentOpened,
            ("incident", number, action, _iso(occurred)),
            occurred,
            incident_id=incident_id,
            repo=d.repo,
            service=service,
            title=issue.opt_text("title") or "",
            body=text,
            opened_at=opened_at,
            root_cause_sha=root_cause.group(1).lower() if root_cause else None,
            deployment_url=deployment_url.group(0) if deployment_url else None,
        )
    )


def _issue_work_item(d: _Delivery, issue: _Fields) -> GitHubNormalized:
    action, number = d.action, issue.integer("number")
    item_id = f"github:{d.repo}#issue{number}"
    if action in ("deleted", "transferred"):  # gone from this repository either way
        at = issue.when("updated_at")
        return _emit(d.event(WorkItemDeleted, ("issue-deleted", number), at, item_id=item_id))
    step: tuple[str, str, str] | None = None
    if action == "opened":
        step, occurred = (action, "Backlog", "open"), issue.when("created_at")
    elif action == "closed":
        done = issue.opt_text("state_reason") not in _ISSUE_NOT_DONE
        step = (action, "Production" if done else "Removed", "closed")
        occurred = issue.when("closed_at")
    else:
        step = (action, "Backlog", "open") if action == "reopened" else None
        occurred = issue.when("updated_at")
    item = _WorkItem(d, issue, "issue", "issue", item_id, number, occurred)
    return _emit(*item.events(issue.text("state"), step))


def _release(d: _Delivery) -> GitHubNormalized:
    return _ignore("release recorded as no deployment")


_HANDLERS: dict[str, Callable[[_Delivery], GitHubNormalized]] = {
    "push": _push,
    "pull_request": _pull_request,
    "pull_request_review": _pull_request_review,
    "deployment": _deployment,
    "deployment_status": _deployment_status,
    "workflow_run": _workflow_run,
    "issues": _issues,
    "release": _release,
}
