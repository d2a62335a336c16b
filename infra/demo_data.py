"""A seeded, realistic synthetic dataset in the sources' own webhook formats.

Jira bodies have the shape of the recorded deliveries in ``shared/fixtures/jira``
(``webhookEvent``, ``timestamp`` in ms, ``issue.fields`` with status and status
category, ``changelog.items`` with ``field == "status"``), so the demo goes
through exactly the code path real webhooks take.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

# (status name, status category) per step of the default workflow.
WORKFLOW: tuple[tuple[str, str], ...] = (
    ("To Do", "new"),
    ("Selected for Development", "new"),
    ("In Progress", "indeterminate"),
    ("In Review", "indeterminate"),
    ("Done", "done"),
)
TEAMS: tuple[tuple[str, float], ...] = (("PAY", 1.4), ("WEB", 1.0), ("OPS", 0.6))
TYPES: tuple[str, ...] = ("Story", "Story", "Bug", "Task")


@dataclass(frozen=True)
class JiraDelivery:
    delivery_id: str
    body: dict[str, Any]


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _jira_time(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}+0000"


class JiraDemoIssue:
    def __init__(
        self, issue_id: int, project: str, number: int, item_type: str, created: datetime
    ) -> None:
        self.issue_id = str(issue_id)
        self.key = f"{project}-{number}"
        self.project = project
        self.item_type = item_type
        self.created = created
        self.summary = f"{item_type} {number} of {project}"
        self.status = WORKFLOW[0]
        self._history = 0

    def _issue(self) -> dict[str, Any]:
        name, category = self.status
        return {
            "id": self.issue_id,
            "key": self.key,
            "self": f"https://demo.atlassian.net/rest/api/2/issue/{self.issue_id}",
            "fields": {
                "summary": self.summary,
                "issuetype": {"name": self.item_type},
                "project": {"key": self.project, "name": self.project},
                "status": {"name": name, "statusCategory": {"key": category}},
                "created": _jira_time(self.created),
                "labels": [],
                "assignee": None,
            },
        }

    def created_body(self) -> JiraDelivery:
        return JiraDelivery(
            f"demo-{self.issue_id}-created",
            {
                "webhookEvent": "jira:issue_created",
                "issue_event_type_name": "issue_created",
                "timestamp": _ms(self.created),
                "issue": self._issue(),
                "changelog": {
                    "id": f"{self.issue_id}000",
                    "items": [
                        {
                            "field": "status",
                            "fieldtype": "jira",
                            "from": None,
                            "fromString": None,
                            "to": "1",
                            "toString": self.status[0],
                        }
                    ],
                },
            },
        )

    def move(self, to: tuple[str, str], at: datetime) -> JiraDelivery:
        previous = self.status
        self.status = to
        self._history += 1
        history_id = f"{self.issue_id}{self._history:03d}"
        return JiraDelivery(
            f"demo-{history_id}",
            {
                "webhookEvent": "jira:issue_updated",
                "issue_event_type_name": "issue_generic",
                "timestamp": _ms(at),
                "issue": self._issue(),
                "changelog": {
                    "id": history_id,
                    "items": [
                        {
                            "field": "status",
                            "fieldtype": "jira",
                            "from": "1",
                            "fromString": previous[0],
                            "to": "2",
                            "toString": to[0],
                        }
                    ],
                },
            },
        )


def jira_deliveries(
    *, now: datetime | None = None, days: int = 60, seed: int = 7
) -> Iterator[JiraDelivery]:
    """Deliveries for ~2 items/day/team-weight over ``days``, in time order per item.

    Items move through the workflow with lognormal stays, some skip review,
    ~8 % are reopened from Done and redone, and recent ones are still in flight.
    """
    rng = random.Random(seed)
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    start = now - timedelta(days=days)
    issue_id = 20_000
    for project, weight in TEAMS:
        for number in range(1, int(days * weight) + 1):
            issue_id += 1
            created = start + timedelta(hours=rng.uniform(0, days * 24))
            issue = JiraDemoIssue(issue_id, project, number, rng.choice(TYPES), created)
            yield issue.created_body()
            at = created
            path = list(WORKFLOW[1:])
            if rng.random() < 0.2:
                path.remove(("In Review", "indeterminate"))
            if rng.random() < 0.08:
                path += [WORKFLOW[2], WORKFLOW[4]]  # reopened into work, then redone
            for step in path:
                at += timedelta(hours=rng.lognormvariate(3.2, 0.9))
                if at >= now:
                    break
                yield issue.move(step, at)
