"""Jira webhook bodies for test scenarios, built from the recorded deliveries.

Each body is a copy of a real recording (``../shared/fixtures/jira``) with the
issue id, key, project, type, status, timestamps and changelog id rewritten,
so the collector sees exactly the shape Jira sends::

    jira = JiraScenario()
    jira.created("FLOW-1", at(0, 9), status="To Do")
    jira.moved("FLOW-1", at(0, 10), "To Do", "In Progress")
    jira.deleted("FLOW-1", at(2))
    for body in jira.bodies:
        await pipeline.post_jira(body)

Every call returns its body (a fresh dict) and appends it to ``bodies``. Issue
ids are allocated per key; changelog ids are unique within the scenario, so the
collector's fallback delivery id (no ``delivery_id`` given) is unique per body.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tests.fixtures import load_fixture

CREATED = "jira/issue_created/cloud_TES-41_created.json"
MOVED = "jira/issue_updated/cloud_TES-41_status_todo_to_inprogress.json"
DELETED = "jira/issue_deleted/cloud_IDT-19_deleted.json"

# Jira's status categories, guessed from the status name when not given.
_CATEGORY_BY_STATUS = {
    "to do": "new", "open": "new", "backlog": "new", "new": "new", "reopened": "new",
    "selected for development": "new",
    "done": "done", "closed": "done", "resolved": "done", "released": "done",
    "won't do": "done", "cancelled": "done", "duplicate": "done",
}
_CATEGORY_IDS = {"new": 2, "indeterminate": 4, "done": 3}


def jira_datetime(at: datetime) -> str:
    """The format of ``issue.fields.created`` (``2019-02-15T19:01:52.971+0000``)."""
    utc = at.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}+0000"


def epoch_ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def category_of(status: str) -> str:
    return _CATEGORY_BY_STATUS.get(status.strip().casefold(), "indeterminate")


@dataclass
class _Issue:
    issue_id: str
    key: str
    project: str
    item_type: str
    created_at: datetime
    summary: str


class JiraScenario:
    def __init__(self, site: str = "https://flowmetrics-test.atlassian.net",
                 first_issue_id: int = 30000) -> None:
        self.site = site
        self.bodies: list[dict[str, Any]] = []
        self._issues: dict[str, _Issue] = {}
        self._next_issue_id = first_issue_id
        self._next_changelog_id = 50000

    def created(
        self,
        key: str,
        at: datetime,
        status: str = "To Do",
        *,
        type: str = "Story",
        project: str | None = None,
        category: str | None = None,
        summary: str | None = None,
    ) -> dict[str, Any]:
        """``jira:issue_created``: the issue exists from ``at`` in ``status``."""
        issue = _Issue(
            issue_id=str(self._next_issue_id),
            key=key,
            project=project or key.rsplit("-", 1)[0],
            item_type=type,
            created_at=at,
            summary=summary or f"{key} summary",
        )
        self._next_issue_id += 1
        self._issues[key] = issue
        body = self._issue_body(CREATED, issue, at, status, category)
        items = body["changelog"]["items"]
        for item in items:
            if str(item.get("fieldId", item.get("field", ""))).casefold() == "status":
                item.update(fromString=None, toString=status, to=_status_id(status))
        body["changelog"]["id"] = self._changelog_id()
        return self._keep(body)

    def moved(
        self,
        key: str,
        at: datetime,
        from_status: str,
        to_status: str,
        *,
        category: str | None = None,
    ) -> dict[str, Any]:
        """``jira:issue_updated`` with one status change at ``at``."""
        issue = self._issues[key]
        body = self._issue_body(MOVED, issue, at, to_status, category)
        body["changelog"] = {
            "id": self._changelog_id(),
            "items": [
                {
                    "field": "status",
                    "fieldtype": "jira",
                    "fieldId": "status",
                    "from": _status_id(from_status),
                    "fromString": from_status,
                    "to": _status_id(to_status),
                    "toString": to_status,
                }
            ],
        }
        return self._keep(body)

    def deleted(self, key: str, at: datetime) -> dict[str, Any]:
        """``jira:issue_deleted`` at ``at``."""
        issue = self._issues[key]
        body = copy.deepcopy(load_fixture(DELETED))
        body["timestamp"] = epoch_ms(at)
        self._rewrite_issue(body["issue"], issue)
        return self._keep(body)

    # -- internals ---------------------------------------------------------------

    def _issue_body(
        self, fixture: str, issue: _Issue, at: datetime, status: str, category: str | None
    ) -> dict[str, Any]:
        body = copy.deepcopy(load_fixture(fixture))
        body["timestamp"] = epoch_ms(at)
        self._rewrite_issue(body["issue"], issue)
        fields = body["issue"]["fields"]
        fields["created"] = jira_datetime(issue.created_at)
        fields["updated"] = jira_datetime(at)
        fields["summary"] = issue.summary
        fields["issuetype"]["name"] = issue.item_type
        key = category or category_of(status)
        fields["status"].update(name=status, id=_status_id(status))
        fields["status"]["statusCategory"].update(key=key, id=_CATEGORY_IDS.get(key, 4))
        return body

    def _rewrite_issue(self, raw: dict[str, Any], issue: _Issue) -> None:
        raw["id"] = issue.issue_id
        raw["key"] = issue.key
        raw["self"] = f"{self.site}/rest/api/2/issue/{issue.issue_id}"
        project = raw["fields"]["project"]
        project.update(key=issue.project, name=issue.project)

    def _changelog_id(self) -> str:
        self._next_changelog_id += 1
        return str(self._next_changelog_id)

    def _keep(self, body: dict[str, Any]) -> dict[str, Any]:
        self.bodies.append(body)
        return body


def _status_id(status: str) -> str:
    return str(10000 + sum(ord(c) for c in status.casefold()))
