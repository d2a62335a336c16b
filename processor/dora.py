"""The DORA fold: one service's full event history in, its derived rows out.

Pure: no I/O (except reading the TOML file in :func:`load_dora_config`). The
store calls :func:`fold_service` with every stored event of the service — its
deployments and incidents, and the commits and pull requests of every
repository that deploys into it — whenever one of them changes, so the result
depends only on the *set* of events: any order, any duplication, same rows.

Definitions (``docs/dora.md`` has the reasoning and the comparison with DevLake
and Four Keys):

- A deployment's events are ordered by ``occurred_at``. It *succeeded* if any
  status was ``success`` — GitHub marks an older deployment ``inactive`` when a
  newer one succeeds, which erases nothing. ``finished_at`` is its first
  ``success`` (else its first ``failure``/``error``). It is *production* when
  its whole environment name matches ``DoraConfig.production_pattern``.
- Failure of a production deployment, first reason wins: ``status`` (its latest
  outcome is ``failure``/``error``), ``rollback`` (a later deployment names it
  in ``rollback_of``, it got a ``rolled_back`` status, or — when
  ``detect_redeploy_rollbacks`` — the next successful production deployment of
  the same repository and environment went back to a SHA deployed before it),
  ``incident`` (an incident is attributed to it).
- Changes: the commits a successful production deployment contains *newly*:
  the deployed SHA's ancestry through pushes (head → its commits → ``before``
  → ..., not across force pushes), stopping at what an earlier successful
  production deployment of the service already shipped; plus the commits of
  every merged pull request whose merge commit is among them (the PR head's
  ancestry, and ``commit_shas``). Lead time = ``finished_at`` - commit time.
- Squash and rebase merges: when the PR's own commits are known, the commits
  the merge wrote onto the base branch (the merge/squash commit, and rebased
  copies) are kept as ``kind = 'merge'`` rows without a lead time: the PR's
  original commits are the changes, so one piece of work counts the same
  whichever merge button was used.
- Incidents: an explicit link wins — ``root cause: <sha>`` names the
  deployment that first shipped that commit (or deployed that SHA), a
  deployment URL names that deployment — searched only among the service's
  production deployments; a link that matches none attributes nothing. Without
  a link: the latest successful production deployment of the service finished
  within ``incident_window`` before the incident opened. Time to restore =
  final resolution - opening; a reopened, unresolved incident has none.
"""

from __future__ import annotations

import re
import tomllib
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

from schemas.events import (
    ChangeCommitted,
    DeploymentRecorded,
    IncidentOpened,
    IncidentResolved,
    PullRequestEvent,
)

DoraEvent = (
    ChangeCommitted | PullRequestEvent | DeploymentRecorded | IncidentOpened | IncidentResolved
)

# Order of statuses stamped with the same instant: what happens first in a deployment's life.
_STATUS_RANK = {"pending": 0, "queued": 0, "in_progress": 1, "success": 2, "failure": 2,
                "error": 2, "inactive": 3, "rolled_back": 3}
_FAILED = frozenset({"failure", "error"})
_OUTCOMES = frozenset({"success", "failure", "error"})
_DEPLOYMENT_PATH = re.compile(r"/([^/\s]+/[^/\s]+)/deployments/(\d+)/?$")


# --- configuration ------------------------------------------------------------------


class DoraConfigError(ValueError):
    """The DORA configuration cannot be used; the message names the entry."""


@dataclass(frozen=True)
class DoraConfig:
    """How deployments and incidents are read (``FLOW_DORA_FILE``, ``docs/dora.md``)."""

    production_pattern: str = "prod|production"
    incident_window: timedelta = timedelta(hours=48)
    detect_redeploy_rollbacks: bool = True
    # repository or service → team; a repository not listed is its own team.
    teams: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    _production: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            compiled = re.compile(self.production_pattern, re.IGNORECASE)
        except re.error as exc:
            raise DoraConfigError(f"production_pattern: {exc}") from exc
        if self.incident_window <= timedelta(0):
            raise DoraConfigError("incident_window_hours must be positive")
        object.__setattr__(self, "_production", compiled)

    def is_production(self, environment: str) -> bool:
        return self._production.fullmatch(environment) is not None

    def team_for(self, repo: str | None, service: str) -> str:
        if repo is not None and repo in self.teams:
            return self.teams[repo]
        return self.teams.get(service, repo if repo is not None else service)


def load_dora_config(path: Path | None) -> DoraConfig:
    """The configuration in ``path`` (TOML), or the defaults when there is none."""
    if path is None:
        return DoraConfig()
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DoraConfigError(f"{path}: {exc}") from exc
    known = {"production_pattern", "incident_window_hours", "detect_redeploy_rollbacks", "teams"}
    if unknown := sorted(set(data) - known):
        raise DoraConfigError(f"{path}: unknown keys {unknown}")
    options: dict[str, Any] = {}
    if "production_pattern" in data:
        options["production_pattern"] = _typed(data, "production_pattern", str)
    if "incident_window_hours" in data:
        hours = _typed(data, "incident_window_hours", (int, float))
        options["incident_window"] = timedelta(hours=hours)
    if "detect_redeploy_rollbacks" in data:
        options["detect_redeploy_rollbacks"] = _typed(data, "detect_redeploy_rollbacks", bool)
    teams = _typed(data, "teams", dict) if "teams" in data else {}
    if not all(isinstance(v, str) for v in teams.values()):
        raise DoraConfigError("teams: every value is a team name (string)")
    return DoraConfig(teams=MappingProxyType(dict(teams)), **options)


def _typed(data: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = data[key]
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise DoraConfigError(f"{key}: unexpected value {value!r}")
    return value


# --- rows ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DeploymentRow:
    deployment_id: str
    service: str
    repo: str
    team: str
    environment: str
    is_production: bool
    sha: str
    status: str
    succeeded: bool
    started_at: datetime
    finished_at: datetime | None
    url: str | None
    rollback_of: str | None
    rolled_back_by: str | None
    failed: bool
    failure_reason: str | None  # status | rollback | incident
    updated_at: datetime


@dataclass(frozen=True)
class ChangeRow:
    """A commit first shipped by ``deployment_id``; ``kind = 'merge'`` rows carry no lead time."""

    service: str
    repo: str
    team: str
    sha: str
    deployment_id: str
    deployed_at: datetime
    committed_at: datetime
    lead_time_s: float | None
    pull_request: str | None
    kind: str  # commit | merge


@dataclass(frozen=True)
class IncidentRow:
    incident_id: str
    service: str
    repo: str | None
    team: str
    title: str
    opened_at: datetime
    resolved_at: datetime | None
    time_to_restore_s: float | None
    root_cause_sha: str | None
    deployment_url: str | None
    deployment_id: str | None
    attribution: str | None  # explicit_sha | explicit_url | window
    updated_at: datetime


@dataclass(frozen=True)
class ServiceProjection:
    service: str
    deployments: tuple[DeploymentRow, ...]
    changes: tuple[ChangeRow, ...]
    incidents: tuple[IncidentRow, ...]


# --- deployments --------------------------------------------------------------------


@dataclass(frozen=True)
class _Deployment:
    deployment_id: str
    service: str
    repo: str
    environment: str
    sha: str
    status: str
    succeeded: bool
    status_failed: bool
    marked_rolled_back: bool
    started_at: datetime
    finished_at: datetime | None
    url: str | None
    rollback_of: str | None
    updated_at: datetime

    @property
    def order(self) -> tuple[datetime, datetime, str]:
        assert self.finished_at is not None
        return (self.finished_at, self.started_at, self.deployment_id)


def _fold_deployment(events: Sequence[DeploymentRecorded]) -> _Deployment:
    ordered = sorted(events, key=lambda e: (e.occurred_at, _STATUS_RANK[e.status], e.event_id))
    last = ordered[-1]

    def at(e: DeploymentRecorded) -> datetime:
        return e.finished_at or e.occurred_at

    successes = [at(e) for e in ordered if e.status == "success"]
    failures = [at(e) for e in ordered if e.status in _FAILED]
    outcomes = [e.status for e in ordered if e.status in _OUTCOMES]
    meaningful = [e for e in ordered if e.status != "inactive"] or ordered
    return _Deployment(
        deployment_id=last.deployment_id,
        service=last.service,
        repo=last.repo,
        environment=last.environment,
        sha=last.sha.lower(),
        status=meaningful[-1].status,
        succeeded=bool(successes),
        status_failed=bool(outcomes) and outcomes[-1] in _FAILED,
        marked_rolled_back=any(e.status == "rolled_back" for e in ordered),
        started_at=min(e.started_at for e in ordered),
        finished_at=min(successes) if successes else (min(failures) if failures else None),
        url=next((e.url for e in reversed(ordered) if e.url), None),
        rollback_of=next((e.rollback_of for e in reversed(ordered) if e.rollback_of), None),
        updated_at=last.occurred_at,
    )


def _rollbacks(
    deployments: Mapping[str, _Deployment], production: Iterable[_Deployment], redeploys: bool
) -> dict[str, str | None]:
    """deployment_id → the deployment that rolled it back (None: its own status says so)."""
    rolled: dict[str, str | None] = {d.deployment_id: None for d in deployments.values()
                                     if d.marked_rolled_back}
    for d in sorted(deployments.values(), key=lambda d: (d.started_at, d.deployment_id)):
        target = d.rollback_of
        if target is None or target == d.deployment_id or target not in deployments:
            continue
        if rolled.get(target) is None:
            rolled[target] = d.deployment_id
    if redeploys:
        lanes: dict[tuple[str, str], list[_Deployment]] = defaultdict(list)
        for d in production:
            if d.succeeded:
                lanes[(d.repo, d.environment)].append(d)
        for lane in lanes.values():
            lane.sort(key=lambda d: d.order)
            for i in range(1, len(lane)):
                current, previous = lane[i], lane[i - 1]
                earlier = {d.sha for d in lane[: i - 1]}
                if current.sha != previous.sha and current.sha in earlier:
                    rolled.setdefault(previous.deployment_id, current.deployment_id)
    return rolled


# --- commit history -------------------------------------------------------------------


@dataclass
class _Push:
    branch: str | None
    before: str | None
    forced: bool
    commits: list[tuple[datetime, str]] = field(default_factory=list)

    def shas(self) -> list[str]:
        return [sha for _, sha in self.commits]


class _History:
    """One repository's commits, as pushes delivered them: the ancestry graph we know."""

    def __init__(self, commits: Iterable[ChangeCommitted]) -> None:
        self.committed_at: dict[str, datetime] = {}
        pushes: dict[tuple[str, str | None, str | None, bool], _Push] = {}
        for c in commits:
            sha = c.sha.lower()
            known = self.committed_at.get(sha)
            self.committed_at[sha] = c.committed_at if known is None else min(known, c.committed_at)
            if c.head_sha is None:
                continue
            before = c.before_sha.lower() if c.before_sha else None
            key = (c.head_sha.lower(), before, c.branch, c.forced)
            push = pushes.setdefault(key, _Push(c.branch, before, c.forced))
            push.commits.append((c.committed_at, sha))
        self.by_head: dict[str, list[_Push]] = defaultdict(list)
        self.listing: dict[str, list[_Push]] = defaultdict(list)
        for (head, *_), push in sorted(pushes.items(), key=lambda kv: repr(kv[0])):
            # Oldest first and the head last (events carry no position in the push).
            push.commits = sorted(set(push.commits), key=lambda c: (c[1] == head, c[0], c[1]))
            self.by_head[head].append(push)
            for sha in push.shas():
                self.listing[sha].append(push)

    def listed_by(self, head: str, branch: str | None) -> set[str]:
        """The commits the push(es) of ``head`` to ``branch`` (any branch: None) listed."""
        return {sha for push in self.by_head.get(head, ())
                if branch is None or push.branch == branch for sha in push.shas()}

    def reach(self, start: str, stop: AbstractSet[str]) -> set[str]:
        """``start`` and its known ancestors, not walking through anything in ``stop``."""
        found: set[str] = set()
        pending = [start]
        while pending:
            sha = pending.pop()
            if sha in found or sha in stop:
                continue
            found.add(sha)
            if sha in self.by_head:
                for push in self.by_head[sha]:
                    pending.extend(push.shas())
                    if push.before and not push.forced:
                        pending.append(push.before)
            elif sha == start:
                # A SHA inside a push (deployed mid-push): the commits up to it.
                for push in self.listing.get(sha, ()):
                    listed = push.shas()
                    pending.extend(listed[: listed.index(sha) + 1])
                    if push.before and not push.forced:
                        pending.append(push.before)
        return found


@dataclass(frozen=True)
class _PullRequest:
    item_id: str
    head_sha: str | None
    base_branch: str | None
    commit_shas: frozenset[str]


def _merged_pull_requests(events: Iterable[PullRequestEvent]) -> dict[str, _PullRequest]:
    """merge commit SHA → the pull request it merged."""
    by_item: dict[str, list[PullRequestEvent]] = defaultdict(list)
    for e in events:
        by_item[e.item_id].append(e)
    merged: dict[str, tuple[tuple[datetime, str], _PullRequest]] = {}
    for item_id, history in by_item.items():
        shas = frozenset(s.lower() for e in history for s in e.commit_shas)
        for e in history:
            if e.type != "pull_request.merged" or not e.merge_commit_sha:
                continue
            head = e.head_sha.lower() if e.head_sha else None
            pr = _PullRequest(item_id, head, e.base_branch, shas)
            key, sha = (e.occurred_at, e.event_id), e.merge_commit_sha.lower()
            if sha not in merged or merged[sha][0] < key:
                merged[sha] = (key, pr)
    return {sha: pr for sha, (_, pr) in merged.items()}


def _changes(
    production: Sequence[_Deployment],
    histories: Mapping[str, _History],
    merges: Mapping[str, Mapping[str, _PullRequest]],
    team_for: Mapping[str, str],
) -> list[ChangeRow]:
    """The commits each successful production deployment shipped first, with lead times."""
    shipped: dict[str, set[str]] = defaultdict(set)
    rows: list[ChangeRow] = []
    for d in sorted((d for d in production if d.succeeded), key=lambda d: d.order):
        history = histories.get(d.repo) or _History(())
        prs = merges.get(d.repo, {})
        done = shipped[d.repo]
        new = history.reach(d.sha, done)
        pr_of: dict[str, str] = {}
        vehicles: set[str] = set()
        frontier = sorted(new)
        while frontier:  # stacked pull requests: a PR's commits can hold another's merge
            added: set[str] = set()
            for sha in frontier:
                pr = prs.get(sha)
                if pr is None:
                    continue
                own = history.reach(pr.head_sha, done) if pr.head_sha else set()
                own |= pr.commit_shas - done
                # The PR's own commits are known (shipped before, or in this deployment):
                # what the merge wrote on the base branch only stands for them.
                known = [pr.head_sha, *pr.commit_shas]
                if any(c in history.committed_at for c in known if c != sha):
                    vehicles.add(sha)
                    merge_push = history.listed_by(sha, pr.base_branch)
                    if pr.head_sha not in merge_push:  # squash or rebase: copies of `own`
                        vehicles |= merge_push - own
                for c in sorted(own | {sha}):
                    pr_of.setdefault(c, pr.item_id)
                added |= own - new
            new |= added
            frontier = sorted(added)
        done |= new
        assert d.finished_at is not None
        for sha in sorted(new):
            committed = history.committed_at.get(sha)
            if committed is None:
                continue  # never seen in a push: no commit time to measure from
            vehicle = sha in vehicles
            lead = None if vehicle else max((d.finished_at - committed).total_seconds(), 0.0)
            rows.append(ChangeRow(
                service=d.service, repo=d.repo, team=team_for[d.deployment_id], sha=sha,
                deployment_id=d.deployment_id, deployed_at=d.finished_at, committed_at=committed,
                lead_time_s=lead, pull_request=pr_of.get(sha),
                kind="merge" if vehicle else "commit",
            ))
    return rows


# --- incidents ----------------------------------------------------------------------


def _attribute(
    opened_at: datetime,
    root_cause: str | None,
    url: str | None,
    production: Sequence[_Deployment],
    changes: Sequence[ChangeRow],
    window: timedelta,
) -> tuple[str | None, str | None]:
    """(deployment_id, how) for one incident, or (None, None). ``production``: the
    service's finished production deployments in finish order."""
    successful = [d for d in production if d.succeeded]
    if root_cause:
        shipped = sorted((c.deployed_at, c.deployment_id) for c in changes
                         if c.sha.startswith(root_cause))
        if shipped:
            return shipped[0][1], "explicit_sha"
        deployed = [d for d in successful if d.sha.startswith(root_cause)]
        if deployed:
            return deployed[0].deployment_id, "explicit_sha"
    if url:
        match = _DEPLOYMENT_PATH.search(url)
        wanted = f"{match[1]}:{match[2]}".casefold() if match else None
        for d in sorted(production, key=lambda d: d.deployment_id):
            if d.url == url or d.deployment_id.casefold() == wanted:
                return d.deployment_id, "explicit_url"
    if root_cause or url:
        return None, None  # the reporter named a cause that is not here: blame no one else
    # The latest one finished in [opened - window, opened].
    latest = bisect_right(successful, opened_at, key=lambda d: d.finished_at or opened_at)
    if latest and opened_at - window <= (successful[latest - 1].finished_at or opened_at):
        return successful[latest - 1].deployment_id, "window"
    return None, None


def _incidents(
    service: str,
    events: Iterable[IncidentOpened | IncidentResolved],
    production: Sequence[_Deployment],
    changes: Sequence[ChangeRow],
    config: DoraConfig,
) -> list[IncidentRow]:
    by_id: dict[str, list[IncidentOpened | IncidentResolved]] = defaultdict(list)
    for e in events:
        by_id[e.incident_id].append(e)
    rows: list[IncidentRow] = []
    for incident_id, history in sorted(by_id.items()):
        history.sort(key=lambda e: (e.occurred_at, isinstance(e, IncidentResolved), e.event_id))
        if history[-1].service != service:
            continue  # the incident moved to another service (mapping changed)
        opens = [e for e in history if isinstance(e, IncidentOpened)]
        if not opens:
            continue  # resolved before we saw it open: no start to measure from
        latest = opens[-1]
        last = history[-1]
        resolved_at = last.resolved_at if isinstance(last, IncidentResolved) else None
        opened_at = min(o.opened_at for o in opens)
        root_cause = next((o.root_cause_sha.lower() for o in reversed(opens)
                           if o.root_cause_sha), None)
        url = next((o.deployment_url for o in reversed(opens) if o.deployment_url), None)
        target, how = _attribute(opened_at, root_cause, url, production, changes,
                                 config.incident_window)
        repo = next((o.repo for o in reversed(opens) if o.repo), None)
        rows.append(IncidentRow(
            incident_id=incident_id, service=service, repo=repo,
            team=config.team_for(repo, service), title=latest.title, opened_at=opened_at,
            resolved_at=resolved_at,
            time_to_restore_s=(max((resolved_at - opened_at).total_seconds(), 0.0)
                               if resolved_at else None),
            root_cause_sha=root_cause, deployment_url=url, deployment_id=target,
            attribution=how, updated_at=last.occurred_at,
        ))
    return rows


# --- the fold -----------------------------------------------------------------------


def _dedupe(events: Iterable[DoraEvent]) -> list[DoraEvent]:
    seen: dict[str, DoraEvent] = {}
    for event in events:
        seen.setdefault(event.event_id, event)
    return sorted(seen.values(), key=lambda e: e.event_id)


def fold_service(
    service: str, events: Iterable[DoraEvent], config: DoraConfig
) -> ServiceProjection:
    """Derived rows of ``service`` from its deployments and incidents and the commits and
    pull requests of the repositories that deploy into it (other services' deployments
    among ``events`` are ignored)."""
    history = _dedupe(events)
    by_deployment: dict[str, list[DeploymentRecorded]] = defaultdict(list)
    commits: dict[str, list[ChangeCommitted]] = defaultdict(list)
    pulls: dict[str, list[PullRequestEvent]] = defaultdict(list)
    incidents: list[IncidentOpened | IncidentResolved] = []
    for e in history:
        if isinstance(e, DeploymentRecorded):
            by_deployment[e.deployment_id].append(e)
        elif isinstance(e, ChangeCommitted):
            commits[e.repo].append(e)
        elif isinstance(e, PullRequestEvent):
            pulls[e.repo].append(e)
        else:
            incidents.append(e)
    folded = (_fold_deployment(d) for d in by_deployment.values())
    deployments = {d.deployment_id: d for d in folded if d.service == service}
    production = sorted(
        (d for d in deployments.values() if config.is_production(d.environment)
         and d.finished_at is not None),
        key=lambda d: d.order,
    )
    teams = {d.deployment_id: config.team_for(d.repo, service) for d in deployments.values()}
    repos = {d.repo for d in production}
    histories = {r: _History(commits.get(r, ())) for r in sorted(repos)}
    merges = {r: _merged_pull_requests(pulls.get(r, ())) for r in sorted(repos)}
    changes = _changes(production, histories, merges, teams)
    incident_rows = _incidents(service, incidents, production, changes, config)
    rolled = _rollbacks(deployments, production, config.detect_redeploy_rollbacks)
    blamed = {i.deployment_id for i in incident_rows if i.deployment_id}
    rows = []
    for d in sorted(deployments.values(), key=lambda d: d.deployment_id):
        production_row = config.is_production(d.environment)
        reasons = [
            reason for reason, applies in (
                ("status", d.status_failed),
                ("rollback", production_row and d.deployment_id in rolled),
                ("incident", d.deployment_id in blamed),
            ) if applies
        ]
        rows.append(DeploymentRow(
            deployment_id=d.deployment_id, service=service, repo=d.repo,
            team=teams[d.deployment_id], environment=d.environment,
            is_production=production_row, sha=d.sha, status=d.status,
            succeeded=d.succeeded, started_at=d.started_at, finished_at=d.finished_at,
            url=d.url, rollback_of=d.rollback_of,
            rolled_back_by=rolled.get(d.deployment_id) if production_row else None,
            failed=bool(reasons), failure_reason=reasons[0] if reasons else None,
            updated_at=d.updated_at,
        ))
    return ServiceProjection(service, tuple(rows), tuple(changes), tuple(incident_rows))


def services_of(events: Iterable[DoraEvent]) -> set[str]:
    """The services a set of events can change: deployments' and incidents' services."""
    return {e.service for e in events if isinstance(
        e, DeploymentRecorded | IncidentOpened | IncidentResolved)}
