"""GitHub readers: one per kind of resource of a repository, each its own cursor scope.

Thin adapters around :mod:`collectors.backfill.github_mapping` (the pure part).

==================  ====================================================  ====================
scope               listing (100 per page)                                resumes at
==================  ====================================================  ====================
``<repo>:issues``   ``/issues?state=all&sort=created&direction=asc&since``  the next page
                    (issues *and* pull requests; a PR also costs
                    ``/pulls/{n}``, its reviews and, merged, its commits)
``<repo>:commits``  ``/commits?sha=<default branch>&since&until``        the next page
``<repo>:deployments``  ``/deployments`` (newest first, until older than      the next page
                    ``since``) + each one's ``/statuses``
``<repo>:workflow_runs``  ``/actions/runs?created=a..b`` in windows (GitHub   window and page
                    caps a filtered listing at 1,000 runs: a fuller window
                    is halved)
==================  ====================================================  ====================

Sorting issues by *creation* keeps page contents stable while the pass runs (an
issue updated meanwhile does not move; the next pass, which starts before its
new ``updated_at``, reads it again). Deployments and workflow runs still in
flight hold the watermark back at their creation, so the next pass sees how
they end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from collectors.backfill.cursors import RunPlan
from collectors.backfill.exceptions import SourceError, SourceResponseError
from collectors.backfill.github_mapping import (
    commit_events,
    deployment_events,
    deployment_settled,
    is_pull_request,
    issue_events,
    next_link,
    pull_request_events,
    workflow_run_events,
)
from collectors.backfill.http import ApiClient
from collectors.backfill.reader import Done, Page, Step
from collectors.github import GitHubMapping, GitHubPayloadError
from schemas.events import CanonicalEvent

log = structlog.get_logger("backfill.github")

KINDS = ("issues", "commits", "deployments", "workflow_runs")
RUNS_LISTING_CAP = 1000  # GitHub's limit on a filtered workflow-run listing
PR_COMMITS_CAP = 250  # GitHub lists at most 250 commits of a pull request

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def github_time(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _when(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


class GitHubRepo:
    """One repository: its canonical ``full_name`` and default branch, read once."""

    def __init__(self, client: ApiClient, name: str) -> None:
        self.client = client
        self.name = name
        self._meta: dict[str, Any] | None = None
        self._lock = asyncio.Lock()

    async def meta(self) -> dict[str, Any]:
        async with self._lock:
            if self._meta is None:
                body = await self.client.get_json(f"/repos/{self.name}")
                if not isinstance(body, dict) or not isinstance(body.get("full_name"), str):
                    raise SourceResponseError(f"github repository {self.name}: no full_name")
                self._meta = body
            return self._meta

    async def full_name(self) -> str:
        return str((await self.meta())["full_name"])

    async def default_branch(self) -> str:
        branch = (await self.meta()).get("default_branch")
        return branch if isinstance(branch, str) and branch else "main"

    async def list_page(self, path: str, params: dict[str, Any]) -> tuple[list[Any], bool]:
        """One page of a listing: its items and whether a next page exists."""
        response = await self.client.get(path, params)
        try:
            body = response.json()
        except ValueError as exc:
            raise SourceResponseError(f"github {path}: body is not JSON") from exc
        if isinstance(body, dict):  # /actions/runs wraps its list
            body = body.get("workflow_runs")
        if not isinstance(body, list):
            raise SourceResponseError(f"github {path}: expected a list")
        return body, next_link(response.headers.get("link")) is not None

    async def list_all(self, path: str, params: dict[str, Any], cap: int = 10_000) -> list[Any]:
        items: list[Any] = []
        page = 1
        while len(items) < cap:
            batch, more = await self.list_page(path, {**params, "page": page})
            items.extend(batch)
            if not more or not batch:
                break
            page += 1
        return items


class _Reader:
    source = "github"
    unit = "items"
    kind = ""

    def __init__(
        self,
        repo: GitHubRepo,
        *,
        mapping: GitHubMapping,
        page_size: int = 100,
        concurrency: int = 8,
        clock: Clock = _utc_now,
    ) -> None:
        self.repo = repo
        self.mapping = mapping
        self.page_size = page_size
        self.concurrency = max(1, concurrency)
        self.clock = clock
        self.scope = f"{repo.name}:{self.kind}"
        self._gate = asyncio.Semaphore(self.concurrency)

    async def estimate(self, plan: RunPlan) -> int | None:
        return None

    def read(self, plan: RunPlan) -> AsyncIterator[Step]:
        raise NotImplementedError

    async def _gather(
        self, items: list[Any], one: Callable[[Any], Awaitable[list[CanonicalEvent]]]
    ) -> list[CanonicalEvent]:
        gate = asyncio.Semaphore(self.concurrency)

        async def guarded(item: Any) -> list[CanonicalEvent]:
            async with gate:
                try:
                    return await one(item)
                except GitHubPayloadError as exc:
                    raise SourceResponseError(f"github {self.scope}: {exc}") from exc

        results = await asyncio.gather(*(guarded(item) for item in items))
        return [event for events in results for event in events]


class IssuesReader(_Reader):
    """Issues and pull requests (work items, incidents, PR reviews and merges)."""

    kind = "issues"
    unit = "issues+PRs"

    async def estimate(self, plan: RunPlan) -> int | None:
        try:
            body = await self.repo.client.get_json(
                "/search/issues",
                {"q": f"repo:{self.repo.name} updated:>={github_time(plan.since)}", "per_page": 1},
            )
        except SourceError as exc:
            log.info("github_estimate_unavailable", scope=self.scope, error=str(exc))
            return None
        count = body.get("total_count") if isinstance(body, dict) else None
        return count if isinstance(count, int) else None

    async def read(self, plan: RunPlan) -> AsyncIterator[Step]:
        full_name = await self.repo.full_name()
        page = int(plan.position.get("page", 1))
        params = {
            "state": "all",
            "sort": "created",
            "direction": "asc",
            "since": github_time(plan.since),
            "per_page": self.page_size,
        }
        while True:
            items, more = await self.repo.list_page(
                f"/repos/{self.repo.name}/issues", {**params, "page": page}
            )
            page += 1
            if items:

                async def one(issue: Any) -> list[CanonicalEvent]:
                    if not isinstance(issue, dict):
                        raise SourceResponseError(f"github {self.scope}: issue is not an object")
                    if is_pull_request(issue):
                        return await self._pull_request(full_name, issue)
                    return issue_events(
                        full_name, issue, received_at=self.clock(), mapping=self.mapping
                    )

                yield Page(await self._gather(items, one), len(items), {"page": page})
            if not more or not items:
                break
        yield Done(plan.until)

    async def _pull_request(self, full_name: str, issue: dict[str, Any]) -> list[CanonicalEvent]:
        number = issue.get("number")
        base = f"/repos/{self.repo.name}/pulls/{number}"
        pr = await self.repo.client.get_json(base)
        if not isinstance(pr, dict):
            raise SourceResponseError(f"github {base}: not an object")
        reviews = await self.repo.list_all(f"{base}/reviews", {"per_page": 100})
        shas: list[str] = []
        if pr.get("merged_at"):
            commits = await self.repo.list_all(
                f"{base}/commits", {"per_page": 100}, cap=PR_COMMITS_CAP
            )
            shas = [
                c["sha"] for c in commits if isinstance(c, dict) and isinstance(c.get("sha"), str)
            ]
        return pull_request_events(
            full_name,
            pr,
            [r for r in reviews if isinstance(r, dict)],
            shas,
            received_at=self.clock(),
            mapping=self.mapping,
        )


class CommitsReader(_Reader):
    """Commits on the default branch."""

    kind = "commits"
    unit = "commits"

    async def read(self, plan: RunPlan) -> AsyncIterator[Step]:
        full_name = await self.repo.full_name()
        branch = await self.repo.default_branch()
        page = int(plan.position.get("page", 1))
        params = {
            "sha": branch,
            "since": github_time(plan.since),
            "until": github_time(plan.until),
            "per_page": self.page_size,
        }
        while True:
            items, more = await self.repo.list_page(
                f"/repos/{self.repo.name}/commits", {**params, "page": page}
            )
            page += 1
            events: list[CanonicalEvent] = []
            for commit in items:
                if not isinstance(commit, dict):
                    raise SourceResponseError(f"github {self.scope}: commit is not an object")
                try:
                    events += commit_events(
                        full_name, branch, commit, received_at=self.clock(), mapping=self.mapping
                    )
                except GitHubPayloadError as exc:
                    raise SourceResponseError(f"github {self.scope}: {exc}") from exc
            if items:
                yield Page(events, len(items), {"page": page})
            if not more or not items:
                break
        yield Done(plan.until)


class DeploymentsReader(_Reader):
    """Deployments (newest first) and their statuses."""

    kind = "deployments"
    unit = "deployments"

    async def read(self, plan: RunPlan) -> AsyncIterator[Step]:
        full_name = await self.repo.full_name()
        page = int(plan.position.get("page", 1))
        unsettled = _when(plan.position.get("unsettled_from"))
        while True:
            items, more = await self.repo.list_page(
                f"/repos/{self.repo.name}/deployments", {"per_page": self.page_size, "page": page}
            )
            page += 1
            wanted = [
                d
                for d in items
                if isinstance(d, dict) and (_when(d.get("created_at")) or plan.since) >= plan.since
            ]
            older = len(wanted) < len(items)
            results = await asyncio.gather(*(self._deployment(full_name, d) for d in wanted))
            events = [e for found, _ in results for e in found]
            pending = [at for _, at in results if at is not None]
            if pending:
                unsettled = min([*pending, *([unsettled] if unsettled else [])])
            if wanted:
                position: dict[str, Any] = {"page": page}
                if unsettled is not None:
                    position["unsettled_from"] = unsettled.isoformat()
                yield Page(events, len(wanted), position)
            if older or not more or not items:
                break
        yield Done(min(plan.until, unsettled) if unsettled else plan.until)

    async def _deployment(
        self, full_name: str, deployment: dict[str, Any]
    ) -> tuple[list[CanonicalEvent], datetime | None]:
        """Its events, and its creation time when it has not settled yet."""
        async with self._gate:
            statuses = await self.repo.list_all(
                f"/repos/{self.repo.name}/deployments/{deployment.get('id')}/statuses",
                {"per_page": 100},
            )
        statuses = [s for s in statuses if isinstance(s, dict)]
        try:
            events = deployment_events(
                full_name, deployment, statuses, received_at=self.clock(), mapping=self.mapping
            )
        except GitHubPayloadError as exc:
            raise SourceResponseError(f"github {self.scope}: {exc}") from exc
        created = _when(deployment.get("created_at"))
        settled = deployment_settled(statuses)
        return events, None if settled or created is None else created


class WorkflowRunsReader(_Reader):
    """Completed runs of the deploy workflow (skipped when no deploy pattern is set)."""

    kind = "workflow_runs"
    unit = "runs"

    def __init__(
        self, repo: GitHubRepo, *, window: timedelta = timedelta(days=30), **kwargs: Any
    ) -> None:
        super().__init__(repo, **kwargs)
        self.window = window

    async def read(self, plan: RunPlan) -> AsyncIterator[Step]:
        if self.mapping.deploy_workflow_pattern is None:
            log.info(
                "github_workflow_runs_skipped",
                scope=self.scope,
                reason="no deploy workflow pattern is configured",
            )
            yield Done(plan.until)
            return
        full_name = await self.repo.full_name()
        start = _when(plan.position.get("window_start")) or plan.since
        page = int(plan.position.get("page", 1))
        unsettled = _when(plan.position.get("unsettled_from"))
        size = self.window
        path = f"/repos/{self.repo.name}/actions/runs"
        while start < plan.until:
            end = min(start + size, plan.until)
            created = f"{github_time(start)}..{github_time(end)}"
            params = {"created": created, "per_page": self.page_size, "page": page}
            response = await self.repo.client.get(path, params)
            try:
                body = response.json()
            except ValueError as exc:
                raise SourceResponseError(f"github {path}: body is not JSON") from exc
            total = body.get("total_count") if isinstance(body, dict) else None
            if (
                page == 1
                and isinstance(total, int)
                and total > RUNS_LISTING_CAP
                and size > timedelta(minutes=1)
            ):
                size = size / 2
                continue
            runs = body.get("workflow_runs") if isinstance(body, dict) else None
            if not isinstance(runs, list):
                raise SourceResponseError(f"github {path}: no workflow_runs list")
            events: list[CanonicalEvent] = []
            for run in runs:
                if not isinstance(run, dict):
                    continue
                if run.get("status") != "completed":
                    at = _when(run.get("created_at"))
                    if at is not None:
                        unsettled = min(at, unsettled) if unsettled else at
                    continue
                try:
                    events += workflow_run_events(
                        full_name, run, received_at=self.clock(), mapping=self.mapping
                    )
                except GitHubPayloadError as exc:
                    raise SourceResponseError(f"github {self.scope}: {exc}") from exc
            more = next_link(response.headers.get("link")) is not None and bool(runs)
            if more:
                page += 1
            else:
                start, page, size = end, 1, self.window
            position: dict[str, Any] = {"window_start": start.isoformat(), "page": page}
            if unsettled is not None:
                position["unsettled_from"] = unsettled.isoformat()
            yield Page(events, len(runs), position)
        yield Done(min(plan.until, unsettled) if unsettled else plan.until)


READERS: dict[str, type[_Reader]] = {
    "issues": IssuesReader,
    "commits": CommitsReader,
    "deployments": DeploymentsReader,
    "workflow_runs": WorkflowRunsReader,
}


def github_readers(
    client: ApiClient,
    repo: str,
    kinds: tuple[str, ...] = KINDS,
    **options: Any,
) -> list[_Reader]:
    shared = GitHubRepo(client, repo)
    return [READERS[kind](shared, **options) for kind in kinds]
