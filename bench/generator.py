"""A seeded, streaming generator of realistic canonical event streams.

Shape of the stream (rates are per work item created):

- Jira work items, created at a steady rate across several teams, each with 3-10
  status transitions (the initial one included): To Do → [Selected] → In Progress
  → In Review → [QA] → [Staging] → Done, with rework (review → back to
  development), reopens (Done → Reopened → ... → Done again), discards
  ("Won't Do") and, rarely, a deletion at the source.
- GitHub pull requests as work items (explicit ``to_stage``), with their
  ``pull_request.*`` events and the commits they merge.
- Per repository: direct commits, deployments (staging and production, a status
  that moves from in_progress to success/failure) and incidents after some
  failed production deployments.
- Delivery faults: a share of events arrives late (hours to days after later
  events of the same item, i.e. out of order within the partition) and a share
  is delivered twice (same ``event_id``, later ``received_at``).

Events are emitted in ``received_at`` order from a heap of pending events, so
memory is bounded by the number of items in flight (a few days of arrivals),
never by the stream's length. The same seed gives the same bytes.

:class:`StreamStats` counts what the processor must end up with (work items,
transitions, stored events), so a benchmark can check the derived tables
without keeping the stream.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import Any

import orjson

from schemas.events import stable_event_id

DAY = 86_400.0
HOUR = 3_600.0

TEAMS: tuple[tuple[str, str], ...] = (
    ("Payments", "PAY"),
    ("Search", "SRCH"),
    ("Platform", "PLAT"),
    ("Mobile", "MOB"),
    ("Growth", "GRW"),
    ("Data", "DATA"),
)
ITEM_TYPES = (("Story", 50), ("Bug", 30), ("Task", 15), ("Epic", 5))
ASSIGNEES = tuple(f"dev{i:02d}" for i in range(40))

_FORWARD: tuple[tuple[str, str, float, float], ...] = (
    # status, category, mean wait before entering it (hours), probability it is visited
    ("Selected for Development", "new", 40.0, 0.5),
    ("In Progress", "indeterminate", 30.0, 1.0),
    ("In Review", "indeterminate", 28.0, 1.0),
    ("QA", "indeterminate", 8.0, 0.4),
    ("Staging", "indeterminate", 10.0, 0.5),
    ("Done", "done", 8.0, 1.0),
)


@dataclass(frozen=True)
class GeneratorConfig:
    seed: int = 7
    start: datetime = datetime(2024, 1, 1, tzinfo=UTC)
    items_per_day: float = 1500.0
    teams: tuple[tuple[str, str], ...] = TEAMS
    repos_per_team: int = 2
    pull_request_share: float = 0.15
    rework_share: float = 0.12  # review sends the item back to development once
    reopen_share: float = 0.12  # done, reopened, done again
    discard_share: float = 0.04
    delete_share: float = 0.005
    update_share: float = 0.5  # a second upsert (reassigned, relabelled) mid-flow
    late_share: float = 0.02
    duplicate_share: float = 0.02
    direct_commit_share: float = 0.1
    deploy_share: float = 0.12
    incident_share: float = 0.3  # of failed production deployments


@dataclass
class StreamStats:
    """What has been emitted so far, and what the derived tables must then hold."""

    events: int = 0
    duplicates: int = 0
    late: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    # Distinct events (duplicates not counted) per type: what an event store keeps.
    distinct_by_type: dict[str, int] = field(default_factory=dict)
    # Distinct work_item.* events.
    work_item_events: int = 0
    # Items with at least one emitted event and no emitted deletion.
    work_items: int = 0
    # Distinct transitions of those items.
    transitions: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "duplicates": self.duplicates,
            "late": self.late,
            "by_type": dict(sorted(self.by_type.items())),
            "distinct_by_type": dict(sorted(self.distinct_by_type.items())),
            "work_item_events": self.work_item_events,
            "work_items": self.work_items,
            "transitions": self.transitions,
        }


class _Item:
    """Per-item bookkeeping for :class:`StreamStats`; freed with the item's last pending event."""

    __slots__ = ("deleted", "emitted_any", "transitions")

    def __init__(self) -> None:
        self.emitted_any = False
        self.deleted = False
        self.transitions = 0


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def plan_statuses(rng: random.Random, config: GeneratorConfig) -> list[tuple[str, str, float]]:
    """One Jira item's statuses after the initial one: (status, category, hours before it).

    Together with the initial transition an item has 3-10 transitions; a plan
    longer than that is cut, leaving the item in flight.
    """
    path: list[tuple[str, str, float]] = []
    forward = [(s, c, h) for s, c, h, p in _FORWARD if p >= 1.0 or rng.random() < p]
    discard_at = rng.randint(1, len(forward) - 1) if rng.random() < config.discard_share else None
    for i, step in enumerate(forward):
        if i == discard_at:
            path.append(("Won't Do", "done", rng.expovariate(1 / 48.0)))
            return path
        path.append((step[0], step[1], rng.expovariate(1 / step[2])))
        if step[0] == "In Review" and rng.random() < config.rework_share:
            path.append(("In Progress", "indeterminate", rng.expovariate(1 / 6.0)))
            path.append(("In Review", "indeterminate", rng.expovariate(1 / 20.0)))
    if rng.random() < config.reopen_share:
        path.append(("Reopened", "new", rng.expovariate(1 / 72.0)))
        path.append(("In Progress", "indeterminate", rng.expovariate(1 / 24.0)))
        path.append(("In Review", "indeterminate", rng.expovariate(1 / 12.0)))
        path.append(("Done", "done", rng.expovariate(1 / 6.0)))
    return path[:9]


class EventStream:
    """An endless stream of canonical events (dicts, wire-ready), deterministic per seed."""

    def __init__(self, config: GeneratorConfig | None = None) -> None:
        self.config = config or GeneratorConfig()
        self.stats = StreamStats()
        self._rng = random.Random(self.config.seed)
        self._heap: list[tuple[float, int, dict[str, Any], _Item | None]] = []
        self._seq = 0
        self._clock = self.config.start.timestamp()
        self._item_no = 0
        self._team_repos = {
            team: tuple(f"acme/{key.lower()}-{r}" for r in range(self.config.repos_per_team))
            for team, key in self.config.teams
        }
        self._last_sha = {repo: "0" * 40 for repos in self._team_repos.values() for repo in repos}
        self._type_weights = ([t for t, _ in ITEM_TYPES], [w for _, w in ITEM_TYPES])

    @property
    def pending(self) -> int:
        """Events scheduled but not yet emitted (bounded: the memory the stream holds)."""
        return len(self._heap)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rng, heap = self._rng, self._heap
        gap = DAY / self.config.items_per_day
        while True:
            self._clock += rng.expovariate(1 / gap)
            while heap and heap[0][0] <= self._clock:
                yield self._emit(heapq.heappop(heap))
            self._new_item(self._clock)

    def take(self, n: int) -> Iterator[dict[str, Any]]:
        return islice(self, n)

    # -- scheduling ------------------------------------------------------------

    def _schedule(self, event: dict[str, Any], item: _Item | None, at: float | None = None) -> None:
        rng = self._rng
        occurred = event["_at"]
        emit = occurred if at is None else at
        if at is None and rng.random() < self.config.late_share:
            emit = occurred + rng.uniform(HOUR, 5 * DAY)
            event["_late"] = True
        self._seq += 1
        heapq.heappush(self._heap, (emit, self._seq, event, item))

    def _emit(self, entry: tuple[float, int, dict[str, Any], _Item | None]) -> dict[str, Any]:
        emit_at, _, event, item = entry
        stats = self.stats
        duplicate = event.pop("_dup", False)
        late = event.pop("_late", False)
        occurred = event.pop("_at")
        event["received_at"] = iso(emit_at)
        stats.events += 1
        kind = event["type"]
        stats.by_type[kind] = stats.by_type.get(kind, 0) + 1
        if duplicate:
            stats.duplicates += 1
        else:
            stats.late += late
            stats.distinct_by_type[kind] = stats.distinct_by_type.get(kind, 0) + 1
            if item is not None:
                self._count(kind, item)
            if self._rng.random() < self.config.duplicate_share:
                again = dict(event, _at=occurred, _dup=True)
                again.pop("received_at")
                self._schedule(again, item, at=emit_at + self._rng.uniform(1.0, 2 * DAY))
        return event

    def _count(self, kind: str, item: _Item) -> None:
        stats = self.stats
        stats.work_item_events += 1
        first, item.emitted_any = not item.emitted_any, True
        if kind == "work_item.deleted":
            if not first:
                stats.work_items -= 1
                stats.transitions -= item.transitions
            item.deleted = True
            return
        if item.deleted:
            return
        if first:
            stats.work_items += 1
        if kind == "work_item.transitioned":
            item.transitions += 1
            stats.transitions += 1

    # -- the domain ------------------------------------------------------------

    def _new_item(self, t: float) -> None:
        rng, config = self._rng, self.config
        self._item_no += 1
        team, project = config.teams[rng.randrange(len(config.teams))]
        repo = rng.choice(self._team_repos[team])
        if rng.random() < config.pull_request_share:
            self._pull_request(t, repo)
        else:
            self._jira_item(t, team, project)
        if rng.random() < config.direct_commit_share:
            self._commit(t + rng.uniform(0, HOUR), repo)
        if rng.random() < config.deploy_share:
            self._deployment(t + rng.uniform(0, HOUR), rng.choice(self._team_repos[team]))

    def _jira_item(self, t: float, team: str, project: str) -> None:
        rng = self._rng
        issue_id = 10_000 + self._item_no
        item_id = f"jira:{issue_id}"
        item = _Item()
        item_type = rng.choices(*self._type_weights)[0]
        base = {"source": "jira", "schema_version": 1, "key": item_id, "item_id": item_id}
        upsert = {
            **base,
            "type": "work_item.upserted",
            "display_key": f"{project}-{self._item_no}",
            "title": f"{item_type} {self._item_no}",
            "item_type": item_type,
            "project": project,
            "team": team,
            "assignee": rng.choice(ASSIGNEES),
            "labels": [],
            "created_at": iso(t),
            "url": f"https://acme.atlassian.net/browse/{project}-{self._item_no}",
        }

        def upserted(at: float, status: str, category: str) -> None:
            event = dict(
                upsert,
                status=status,
                status_category=category,
                event_id=stable_event_id("jira", issue_id, "upsert", int(at * 1000)),
                occurred_at=iso(at),
                _at=at,
            )
            self._schedule(event, item)

        initial = rng.choice(("To Do", "Backlog"))
        upserted(t, initial, "new")
        self._schedule(
            {
                **base,
                "type": "work_item.transitioned",
                "event_id": stable_event_id("jira", issue_id, "created"),
                "occurred_at": iso(t),
                "_at": t,
                "from_status": None,
                "to_status": initial,
                "to_status_category": "new",
                "to_stage": None,
                "sequence": 0,
            },
            item,
        )
        at, previous = t, initial
        plan = plan_statuses(rng, self.config)
        update_at = rng.randrange(len(plan)) if rng.random() < self.config.update_share else -1
        for n, (status, category, hours) in enumerate(plan):
            at += max(60.0, hours * HOUR)
            self._schedule(
                {
                    **base,
                    "type": "work_item.transitioned",
                    "event_id": stable_event_id("jira", issue_id, "status", f"h{n}", 0),
                    "occurred_at": iso(at),
                    "_at": at,
                    "from_status": previous,
                    "to_status": status,
                    "to_status_category": category,
                    "to_stage": None,
                    "sequence": 0,
                },
                item,
            )
            if n == update_at:
                upsert["assignee"] = rng.choice(ASSIGNEES)
                upserted(at, status, category)
            previous = status
        if rng.random() < self.config.delete_share:
            at += rng.uniform(DAY, 30 * DAY)
            self._schedule(
                {
                    **base,
                    "type": "work_item.deleted",
                    "occurred_at": iso(at),
                    "_at": at,
                    "event_id": stable_event_id("jira", issue_id, "deleted"),
                },
                item,
            )

    def _pull_request(self, t: float, repo: str) -> None:
        rng = self._rng
        number = self._item_no
        item_id = f"github:{repo}#{number}"
        item = _Item()
        shas = tuple(
            stable_event_id("sha", repo, number, i) + "00000000" for i in range(rng.randint(1, 3))
        )
        base = {"source": "github", "schema_version": 1, "key": item_id, "item_id": item_id}
        pr = {
            "repo": repo,
            "number": number,
            "title": f"PR {number}",
            "created_at": iso(t),
            "commit_shas": list(shas),
            "author": rng.choice(ASSIGNEES),
        }

        def step(at: float, action: str, status: str, stage: str) -> None:
            ids = (repo, number, action)
            self._schedule(
                {
                    **base,
                    "type": "work_item.upserted",
                    "event_id": stable_event_id("github", *ids, "upsert"),
                    "occurred_at": iso(at),
                    "_at": at,
                    "display_key": f"{repo}#{number}",
                    "title": pr["title"],
                    "item_type": "pull_request",
                    "project": repo,
                    "team": repo,
                    "status": status,
                    "assignee": pr["author"],
                    "labels": [],
                    "created_at": iso(t),
                    "url": f"https://github.com/{repo}/pull/{number}",
                },
                item,
            )
            self._schedule(
                {
                    **base,
                    "type": "work_item.transitioned",
                    "event_id": stable_event_id("github", *ids, "transition"),
                    "occurred_at": iso(at),
                    "_at": at,
                    "from_status": None,
                    "to_status": status,
                    "to_status_category": None,
                    "to_stage": stage,
                    "sequence": 0,
                },
                item,
            )
            self._schedule(
                {
                    **base,
                    **pr,
                    "type": f"pull_request.{action}",
                    "event_id": stable_event_id("github", *ids),
                    "occurred_at": iso(at),
                    "_at": at,
                    "merged_at": iso(at) if action == "merged" else None,
                },
                None,
            )

        step(t, "opened", "open", "Development")
        at = t + max(300.0, rng.expovariate(1 / (10 * HOUR)))
        step(at, "ready", "in_review", "Testing")
        at += max(300.0, rng.expovariate(1 / (20 * HOUR)))
        if rng.random() < 0.85:
            step(at, "merged", "merged", "Production")
            for sha in shas:
                self._commit(t - rng.uniform(0, DAY), repo, sha=sha, pushed=at)
        else:
            step(at, "closed", "closed", "Removed")

    def _commit(
        self, at: float, repo: str, *, sha: str | None = None, pushed: float | None = None
    ) -> None:
        sha = sha or stable_event_id("direct", repo, self._seq) + "00000000"
        pushed = pushed if pushed is not None else at
        before, self._last_sha[repo] = self._last_sha[repo], sha
        self._schedule(
            {
                "type": "change.committed",
                "source": "github",
                "schema_version": 1,
                "key": repo,
                "event_id": stable_event_id("github", repo, "commit", sha),
                "occurred_at": iso(pushed),
                "_at": pushed,
                "repo": repo,
                "sha": sha,
                "authored_at": iso(at),
                "committed_at": iso(at),
                "branch": "main",
                "head_sha": sha,
                "before_sha": before,
                "author": self._rng.choice(ASSIGNEES),
                "message": "change",
            },
            None,
        )

    def _deployment(self, at: float, repo: str) -> None:
        rng = self._rng
        self._seq += 1
        deployment_id = f"{repo}/{self._seq}"
        environment = "production" if rng.random() < 0.7 else "staging"
        service = repo.split("/", 1)[1]
        sha = self._last_sha[repo]
        done = at + rng.uniform(120, 1200)
        roll = rng.random()
        final = "success" if roll < 0.9 else "failure" if roll < 0.97 else "rolled_back"
        for status, when in (("in_progress", at), (final, done)):
            self._schedule(
                {
                    "type": "deployment.recorded",
                    "source": "github",
                    "schema_version": 1,
                    "key": repo,
                    "event_id": stable_event_id("github", deployment_id, status),
                    "occurred_at": iso(when),
                    "_at": when,
                    "deployment_id": deployment_id,
                    "repo": repo,
                    "service": service,
                    "environment": environment,
                    "status": status,
                    "sha": sha,
                    "started_at": iso(at),
                    "finished_at": iso(when) if status != "in_progress" else None,
                    "url": None,
                    "rollback_of": None,
                },
                None,
            )
        failed_in_production = environment == "production" and final != "success"
        if failed_in_production and rng.random() < self.config.incident_share:
            self._incident(done + rng.uniform(60, 2 * HOUR), repo, service, sha)

    def _incident(self, at: float, repo: str, service: str, sha: str) -> None:
        incident_id = f"inc-{self._seq}"
        key = f"incident:{service}"
        resolved = at + self._rng.uniform(0.5 * HOUR, 2 * DAY)
        common = {
            "source": "pagerduty",
            "schema_version": 1,
            "key": key,
            "incident_id": incident_id,
            "service": service,
        }
        self._schedule(
            {
                **common,
                "type": "incident.opened",
                "event_id": stable_event_id("pagerduty", incident_id, "opened"),
                "occurred_at": iso(at),
                "_at": at,
                "repo": repo,
                "title": f"{service} degraded",
                "body": "",
                "opened_at": iso(at),
                "root_cause_sha": None,
                "deployment_url": None,
            },
            None,
        )
        self._schedule(
            {
                **common,
                "type": "incident.resolved",
                "event_id": stable_event_id("pagerduty", incident_id, "resolved"),
                "occurred_at": iso(resolved),
                "_at": resolved,
                "resolved_at": iso(resolved),
            },
            None,
        )


def wire(event: dict[str, Any]) -> tuple[bytes, bytes]:
    """The Kafka record of an event: (key, compact JSON value)."""
    return event["key"].encode(), orjson.dumps(event)


def generate(n: int, seed: int = 7, **options: Any) -> Iterator[dict[str, Any]]:
    """The first ``n`` events of the stream for ``seed``."""
    return EventStream(GeneratorConfig(seed=seed, **options)).take(n)
