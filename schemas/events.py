"""Canonical events (schema version 1).

Every event shares one envelope:

- ``event_id``: stable and derived from the source's change identity (see
  :func:`stable_event_id`), so a webhook, its retry and a backfill of the same
  change carry the same id and fold once.
- ``type``: the discriminator, e.g. ``work_item.transitioned``.
- ``source``: the producing system (``jira``, ``github``, or any name a
  third-party producer chooses).
- ``occurred_at``: when the change happened at the source (timezone-aware).
- ``received_at``: when flowmetrics (or the producer) received it.
- ``schema_version``: ``1``. Evolution rule: additive, optional fields keep the
  version; anything else bumps it and the processor accepts both for a release.
- ``key``: the partition key; per-entity order holds within it
  (:func:`schemas.topics.partition_key`).

Work items are identified by ``item_id`` = ``<source>:<native id>`` (for Jira the
immutable numeric issue id, for GitHub ``<repo>#<number>``), never by a display
key that can change when an issue moves between projects.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Annotated, Any, Final, Literal

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, model_validator

SCHEMA_VERSION: Final = 1

NonEmpty = Annotated[str, Field(min_length=1, max_length=512)]


def stable_event_id(*parts: object) -> str:
    """A deterministic event id from the parts that identify a change at its source."""
    raw = "\x1f".join("" if p is None else str(p) for p in parts)
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


class _Envelope(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: NonEmpty
    source: NonEmpty
    occurred_at: AwareDatetime
    received_at: AwareDatetime
    schema_version: Literal[1] = SCHEMA_VERSION
    key: NonEmpty


class WorkItemUpserted(_Envelope):
    """The latest known attributes of a work item (latest ``occurred_at`` wins)."""

    type: Literal["work_item.upserted"] = "work_item.upserted"
    item_id: NonEmpty
    display_key: NonEmpty
    title: str = ""
    item_type: str = "unknown"
    project: str = ""
    team: str = ""
    status: str | None = None
    status_category: str | None = None
    assignee: str | None = None
    labels: tuple[str, ...] = ()
    created_at: AwareDatetime
    url: str | None = None


class WorkItemTransitioned(_Envelope):
    """A status change; ``from_status`` is null for the initial status at creation."""

    type: Literal["work_item.transitioned"] = "work_item.transitioned"
    item_id: NonEmpty
    from_status: str | None = None
    to_status: NonEmpty
    to_status_category: str | None = None
    # Set by sources whose flow is not status-based (GitHub pull requests):
    # the stage to use directly, bypassing the status → stage mapping.
    to_stage: str | None = None
    # Order among transitions with the same occurred_at (one Jira changelog
    # can carry several status items stamped with one millisecond).
    sequence: int = 0


class WorkItemDeleted(_Envelope):
    """The item is gone at the source; it disappears from every metric."""

    type: Literal["work_item.deleted"] = "work_item.deleted"
    item_id: NonEmpty


class ChangeCommitted(_Envelope):
    """A commit seen on a branch. ``head_sha``/``before_sha`` are the push it came in,
    which is how deployed SHAs are traced back to their commits. ``forced``: that
    push was a force push, so ``before_sha`` is the replaced head, not an ancestor."""

    type: Literal["change.committed"] = "change.committed"
    repo: NonEmpty
    sha: NonEmpty
    authored_at: AwareDatetime
    committed_at: AwareDatetime
    branch: str | None = None
    head_sha: str | None = None
    before_sha: str | None = None
    forced: bool = False
    author: str | None = None
    message: str = ""


PullRequestAction = Literal["opened", "ready", "reviewed", "merged", "closed", "reopened"]


class PullRequestEvent(_Envelope):
    """``pull_request.<action>``; ``commit_shas`` lists the PR's commits when known."""

    type: Literal[
        "pull_request.opened",
        "pull_request.ready",
        "pull_request.reviewed",
        "pull_request.merged",
        "pull_request.closed",
        "pull_request.reopened",
    ]
    repo: NonEmpty
    number: int
    item_id: NonEmpty
    title: str = ""
    head_sha: str | None = None
    merge_commit_sha: str | None = None
    base_branch: str | None = None
    created_at: AwareDatetime
    merged_at: AwareDatetime | None = None
    commit_shas: tuple[str, ...] = ()
    author: str | None = None


DeploymentStatus = Literal[
    "pending", "queued", "in_progress", "success", "failure", "error", "inactive", "rolled_back"
]


class DeploymentRecorded(_Envelope):
    """A deployment and its latest status. One ``deployment_id`` may be recorded
    several times as its status moves; the latest ``occurred_at`` wins."""

    type: Literal["deployment.recorded"] = "deployment.recorded"
    deployment_id: NonEmpty
    repo: NonEmpty
    service: NonEmpty
    environment: NonEmpty
    status: DeploymentStatus
    sha: NonEmpty
    started_at: AwareDatetime
    finished_at: AwareDatetime | None = None
    url: str | None = None
    # Set when this deployment rolls back an earlier one (by its deployment_id).
    rollback_of: str | None = None


class IncidentOpened(_Envelope):
    type: Literal["incident.opened"] = "incident.opened"
    incident_id: NonEmpty
    repo: str | None = None
    service: NonEmpty
    title: str = ""
    body: str = ""
    opened_at: AwareDatetime
    # Explicit attribution, when the source carries one.
    root_cause_sha: str | None = None
    deployment_url: str | None = None


class IncidentResolved(_Envelope):
    type: Literal["incident.resolved"] = "incident.resolved"
    incident_id: NonEmpty
    service: NonEmpty
    resolved_at: AwareDatetime


class ServiceDeclared(_Envelope):
    """A service of the catalog: its owning team and the repositories and Jira
    projects that feed it. The latest ``occurred_at`` wins."""

    type: Literal["service.declared"] = "service.declared"
    service: NonEmpty
    team: str = ""
    repos: tuple[str, ...] = ()
    jira_projects: tuple[str, ...] = ()
    description: str = ""


class ServiceEdgeObserved(_Envelope):
    """``client`` called ``server`` (the OpenTelemetry service graph), seen at
    ``occurred_at``. ``connection_type`` is the graph's label (``""`` for a plain
    request, ``messaging_system``, ``database``, ``virtual_node``; several, comma
    separated, when the pair had several series); ``asynchronous``: every series
    of the pair went through a messaging system."""

    type: Literal["service_edge.observed"] = "service_edge.observed"
    client: NonEmpty
    server: NonEmpty
    connection_type: str = ""
    asynchronous: bool = False

    @model_validator(mode="after")
    def _no_self_loop(self) -> ServiceEdgeObserved:
        if self.client == self.server:
            raise ValueError("a service edge joins two different services")
        return self


CanonicalEvent = Annotated[
    WorkItemUpserted
    | WorkItemTransitioned
    | WorkItemDeleted
    | ChangeCommitted
    | PullRequestEvent
    | DeploymentRecorded
    | IncidentOpened
    | IncidentResolved
    | ServiceDeclared
    | ServiceEdgeObserved,
    Field(discriminator="type"),
]

EVENT_MODELS: tuple[type[_Envelope], ...] = (
    WorkItemUpserted,
    WorkItemTransitioned,
    WorkItemDeleted,
    ChangeCommitted,
    PullRequestEvent,
    DeploymentRecorded,
    IncidentOpened,
    IncidentResolved,
    ServiceDeclared,
    ServiceEdgeObserved,
)

_EVENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(CanonicalEvent)
_EVENTS_ADAPTER: TypeAdapter[list[Any]] = TypeAdapter(list[CanonicalEvent])


def parse_event(data: bytes | str | dict[str, Any]) -> CanonicalEvent:
    """Validate one canonical event (raises ``pydantic.ValidationError``)."""
    if isinstance(data, bytes | str):
        data = orjson.loads(data)
    return _EVENT_ADAPTER.validate_python(data)  # type: ignore[no-any-return]


def parse_event_json(data: bytes | str) -> CanonicalEvent:
    """Validate one canonical event from JSON text in one pass (pydantic-core parses it);
    for trusted stored events, where a JSON error is not a case to tell apart."""
    return _EVENT_ADAPTER.validate_json(data)  # type: ignore[no-any-return]


def parse_events(data: list[dict[str, Any]]) -> list[CanonicalEvent]:
    return _EVENTS_ADAPTER.validate_python(data)


def event_json(event: _Envelope) -> bytes:
    """The wire form: compact JSON, ISO-8601 timestamps with offsets."""
    return orjson.dumps(event.model_dump(mode="json"))


def utc_iso(ts: datetime) -> str:
    return ts.isoformat()
