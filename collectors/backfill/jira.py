"""Jira reader: JQL search pages, each issue's full changelog, canonical events.

Thin adapter around :mod:`collectors.backfill.jira_mapping` (the pure part).

Requests per page of ``page_size`` issues:

- one search (``expand=changelog``): Data Center embeds whole changelogs, Jira
  Cloud at most the latest 100 histories;
- for every issue whose embedded changelog is not complete: its changelog
  pages, ``/rest/api/3/issue/{id}/changelog`` on Cloud (100 per page; after the
  first page the rest are fetched concurrently), or the issue with
  ``expand=changelog`` on Data Center.

Issues are processed ``concurrency`` at a time; a page is one unit of progress
(its position is the last issue key of the page).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Literal

import structlog

from collectors.backfill.cursors import RunPlan
from collectors.backfill.exceptions import (
    SourceError,
    SourceRequestError,
    SourceResponseError,
)
from collectors.backfill.http import ApiClient
from collectors.backfill.jira_mapping import (
    ISSUE_FIELDS,
    embedded_histories,
    issue_events,
    key_number,
    parse_changelog_page,
    parse_search_page,
    search_jql,
    status_categories,
    user_zone,
)
from collectors.backfill.reader import Done, Page, Step
from collectors.jira import JiraPayloadError
from processor.stages import StageConfig
from schemas.events import CanonicalEvent

log = structlog.get_logger("backfill.jira")

JiraApi = Literal["cloud", "datacenter"]
CHANGELOG_PAGE = 100
# JQL dates are read in the user's zone; when it is unknown, reach back far
# enough for any zone (UTC-12 .. UTC+14).
_UNKNOWN_ZONE_MARGIN = timedelta(hours=14)


class JiraReader:
    source = "jira"
    unit = "issues"

    def __init__(
        self,
        client: ApiClient,
        api: JiraApi,
        project: str,
        *,
        stages: StageConfig,
        page_size: int = 100,
        concurrency: int = 8,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.client = client
        self.api = api
        self.project = project
        self.scope = f"project:{project}"
        self.stages = stages
        self.page_size = page_size
        self.concurrency = max(1, concurrency)
        self.clock = clock
        self._zone: tzinfo | None = None
        self._categories: dict[str, str] = {}
        self._prepared = False
        # Changelog pages in flight (separate from the per-issue gate, which is
        # held while an issue's pages are fetched).
        self._pages = asyncio.Semaphore(self.concurrency)

    @property
    def _v(self) -> str:
        return "3" if self.api == "cloud" else "2"

    async def _prepare(self) -> None:
        """The user's time zone (for JQL dates) and status categories; both best effort."""
        if self._prepared:
            return
        self._prepared = True
        try:
            self._zone = user_zone(await self.client.get_json(f"/rest/api/{self._v}/myself"))
        except SourceError as exc:
            log.warning("jira_time_zone_unknown", error=str(exc))
        try:
            self._categories = status_categories(await self.client.get_json("/rest/api/2/status"))
        except SourceError as exc:
            log.warning("jira_status_categories_unknown", error=str(exc))

    def _since(self, plan: RunPlan) -> tuple[datetime, tzinfo]:
        if self._zone is None:
            return plan.since - _UNKNOWN_ZONE_MARGIN, UTC
        return plan.since, self._zone

    async def estimate(self, plan: RunPlan) -> int | None:
        await self._prepare()
        since, zone = self._since(plan)
        after = plan.position.get("after_key")
        jql = search_jql(self.project, since, zone, after if isinstance(after, str) else None)
        try:
            if self.api == "cloud":
                body = await self.client.post_json(
                    "/rest/api/3/search/approximate-count", {"jql": jql.split(" ORDER BY")[0]}
                )
                count = body.get("count") if isinstance(body, dict) else None
            else:
                body = await self.client.get_json(
                    "/rest/api/2/search", {"jql": jql, "maxResults": 0, "fields": "id"}
                )
                count = body.get("total") if isinstance(body, dict) else None
        except SourceError as exc:
            log.info("jira_estimate_unavailable", error=str(exc))
            return None
        return count if isinstance(count, int) else None

    async def read(self, plan: RunPlan) -> AsyncIterator[Step]:
        await self._prepare()
        since, zone = self._since(plan)
        after = plan.position.get("after_key")
        after_key = after if isinstance(after, str) else None
        keyset = True
        token: str | None = None
        start_at = 0

        def search(bound: str | None) -> asyncio.Task[Any]:
            jql = search_jql(self.project, since, zone, bound if keyset else None)
            return asyncio.create_task(self._search(jql, token=token, start_at=start_at))

        # The next search page is fetched while this page's changelogs are read
        # and its events published: its bound (the page's last key) is known.
        pending: asyncio.Task[Any] | None = None
        try:
            while True:
                pending = pending or search(after_key)
                try:
                    body = await pending
                except SourceRequestError as exc:
                    if not keyset or after_key is None:
                        raise
                    # The key bound was refused (its issue deleted since?): page the
                    # plain query natively and skip what is at or before the bound.
                    log.warning("jira_keyset_refused", after_key=after_key, error=str(exc))
                    keyset, pending = False, None
                    continue
                pending = None
                page = self._page(body)
                issues = page.issues
                if not keyset and after_key is not None:
                    bound = key_number(after_key)
                    issues = [i for i in issues if key_number(str(i.get("key", ""))) > bound]
                if page.more:
                    if not keyset:
                        token = page.next_page_token
                        start_at += len(page.issues)
                    pending = search(str(page.issues[-1].get("key")))
                if issues:
                    events = await self._events(issues)
                    after_key = str(issues[-1].get("key"))
                    yield Page(events, len(issues), {"after_key": after_key})
                if not page.more:
                    break
        finally:
            if pending is not None:
                pending.cancel()
        yield Done(plan.until)

    def _page(self, body: Any) -> Any:
        try:
            return parse_search_page(body, requested=self.page_size)
        except JiraPayloadError as exc:
            raise SourceResponseError(f"jira search: {exc}") from exc

    async def _search(self, jql: str, *, token: str | None, start_at: int) -> Any:
        params: dict[str, Any] = {
            "jql": jql,
            "maxResults": self.page_size,
            "fields": ",".join(ISSUE_FIELDS),
            "expand": "changelog",
        }
        if self.api == "cloud":
            if token:
                params["nextPageToken"] = token
            return await self.client.get_json("/rest/api/3/search/jql", params)
        params["startAt"] = start_at
        return await self.client.get_json("/rest/api/2/search", params)

    async def _events(self, issues: list[dict[str, Any]]) -> list[CanonicalEvent]:
        gate = asyncio.Semaphore(self.concurrency)

        async def one(issue: dict[str, Any]) -> list[CanonicalEvent]:
            async with gate:
                histories = embedded_histories(issue)
                if histories is None:
                    histories = await self._changelog(str(issue.get("id")))
            try:
                return issue_events(
                    issue,
                    histories,
                    received_at=self.clock(),
                    stages=self.stages,
                    categories=self._categories,
                )
            except JiraPayloadError as exc:
                raise SourceResponseError(f"jira issue {issue.get('key')}: {exc}") from exc

        results = await asyncio.gather(*(one(issue) for issue in issues))
        return [event for events in results for event in events]

    async def _changelog(self, issue_id: str) -> list[dict[str, Any]]:
        try:
            if self.api == "datacenter":
                issue = await self.client.get_json(
                    f"/rest/api/2/issue/{issue_id}", {"expand": "changelog", "fields": "status"}
                )
                if not isinstance(issue, dict) or not isinstance(issue.get("changelog"), dict):
                    raise SourceResponseError(f"jira issue {issue_id}: no changelog")
                return parse_changelog_page(issue["changelog"]).histories
            return await self._cloud_changelog(issue_id)
        except JiraPayloadError as exc:
            raise SourceResponseError(f"jira issue {issue_id} changelog: {exc}") from exc

    async def _cloud_changelog(self, issue_id: str) -> list[dict[str, Any]]:
        url = f"/rest/api/3/issue/{issue_id}/changelog"

        async def fetch(start: int) -> Any:
            async with self._pages:
                body = await self.client.get_json(
                    url, {"startAt": start, "maxResults": CHANGELOG_PAGE}
                )
            return parse_changelog_page(body)

        first = await fetch(0)
        histories = list(first.histories)
        if first.is_last:
            return histories
        if first.total is not None:
            # The total is known: the remaining pages can be fetched together.
            size = max(len(first.histories), 1)
            rest = await asyncio.gather(
                *(fetch(start) for start in range(len(first.histories), first.total, size))
            )
            for page in rest:
                histories.extend(page.histories)
            return histories
        start = len(histories)
        while True:
            page = await fetch(start)
            histories.extend(page.histories)
            if page.is_last:
                return histories
            start += len(page.histories)
