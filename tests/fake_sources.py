"""A local HTTP server that plays the Jira and GitHub REST APIs, for backfill tests.

Not a mock of our code: a real server on a real port, speaking the documented
wire shapes — Jira Cloud (``/rest/api/3/search/jql`` with ``nextPageToken``,
``/issue/{id}/changelog`` pages), Jira Data Center (``/rest/api/2/search`` with
``startAt``/``total``, whole changelogs embedded), GitHub (``Link`` pagination,
``x-ratelimit-*`` headers, installation tokens for GitHub Apps) — with the faults
real ones have: 5xx bursts, dropped connections, Jira 429 + ``Retry-After``,
GitHub's primary (``x-ratelimit-remaining: 0`` until ``x-ratelimit-reset``) and
secondary (403 + ``retry-after``) limits.

The data is built from the recorded webhook bodies in ``../shared/fixtures``:
a webhook's ``issue`` / ``pull_request`` / ``deployment`` object *is* the REST
representation, and a Jira webhook's ``changelog`` is one changelog history
(``created`` = the recorded ``issue.fields.updated``). Synthetic items for volume
are copies of those recorded objects with new ids, keys and times.

Every answer is logged in :attr:`FakeSources.served` so tests can check what
the client did (e.g. that nothing was sent while a limit was in force).

Run it alone (for a throughput measurement against a separate process)::

    python -m tests.fake_sources --issues 2000 --port 8765
"""

from __future__ import annotations

import argparse
import base64
import copy
import math
import re
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit
from zoneinfo import ZoneInfo

import orjson

from tests.fixtures import load_fixture

# --------------------------------------------------------------------------- faults


@dataclass
class Faults:
    """What goes wrong, and how often (every N answers; 0 = never)."""

    error_burst_every: int = 0  # after every N answers, a burst of 5xx
    error_burst: int = 2
    error_status: int = 502
    drop_every: int = 0  # close the connection without an answer
    jira_429_every: int = 0  # Jira: 429 + Retry-After, and 429 until it passes
    retry_after_s: float = 1.0
    github_quota: int = 0  # GitHub primary limit: answers per window
    github_window_s: float = 1.0
    github_secondary_every: int = 0  # GitHub: 403 secondary limit + retry-after
    latency_s: float = 0.0  # added to every answer
    changelog_latency_s: float = 0.0  # added to Jira changelog pages only


@dataclass(frozen=True)
class Served:
    at: float  # time.time() when the request arrived
    method: str
    path: str
    query: dict[str, str]
    status: int
    outcome: str  # ok | error | drop | 429 | primary | secondary | auth | client
    until: float = 0.0  # refusals: when the limit lifts (epoch seconds)


class _Limits:
    """Fault state shared by all handler threads."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self.lock = threading.Lock()
        self.answers = 0
        self.burst_left = 0
        self.jira_count = 0
        self.jira_limited_until = 0.0
        self.gh_count = 0
        self.gh_window_end = 0
        self.gh_used = 0
        self.gh_secondary_until = 0.0

    def general(self) -> str | None:
        f = self.faults
        with self.lock:
            self.answers += 1
            if self.burst_left > 0:
                self.burst_left -= 1
                return "error"
            if f.error_burst_every and self.answers % f.error_burst_every == 0:
                self.burst_left = f.error_burst - 1
                return "error"
            if f.drop_every and self.answers % f.drop_every == 0:
                return "drop"
        return None

    def jira(self, now: float) -> float | None:
        """Seconds to put in Retry-After when this Jira request is refused."""
        f = self.faults
        with self.lock:
            if now < self.jira_limited_until:
                return max(self.jira_limited_until - now, 0.0)
            self.jira_count += 1
            if f.jira_429_every and self.jira_count % f.jira_429_every == 0:
                self.jira_limited_until = now + f.retry_after_s
                return f.retry_after_s
        return None

    def github(self, now: float) -> tuple[str | None, dict[str, str]]:
        """(refusal kind or None, rate-limit headers) for a GitHub request."""
        f = self.faults
        with self.lock:
            if now < self.gh_secondary_until:
                wait = math.ceil(self.gh_secondary_until - now)
                return "secondary", {"retry-after": str(max(wait, 1))}
            self.gh_count += 1
            if f.github_secondary_every and self.gh_count % f.github_secondary_every == 0:
                self.gh_secondary_until = now + f.retry_after_s
                return "secondary", {"retry-after": str(max(math.ceil(f.retry_after_s), 1))}
            if not f.github_quota:
                reset = int(now) + 3600
                return None, _gh_headers(5000, 4999, reset, 1)
            if now >= self.gh_window_end:
                self.gh_window_end = math.ceil(now + f.github_window_s)
                self.gh_used = 0
            if self.gh_used >= f.github_quota:
                return "primary", _gh_headers(f.github_quota, 0, self.gh_window_end, self.gh_used)
            self.gh_used += 1
            remaining = f.github_quota - self.gh_used
            return None, _gh_headers(f.github_quota, remaining, self.gh_window_end, self.gh_used)


def _gh_headers(limit: int, remaining: int, reset: int, used: int) -> dict[str, str]:
    return {
        "x-ratelimit-limit": str(limit),
        "x-ratelimit-remaining": str(remaining),
        "x-ratelimit-reset": str(reset),
        "x-ratelimit-used": str(used),
        "x-ratelimit-resource": "core",
    }


# ----------------------------------------------------------------------------- Jira

JIRA_STATUSES = [  # the ids of the recorded sites (TES-41 cloud, TES-4 server)
    {"id": "10001", "name": "To Do", "statusCategory": {"id": 2, "key": "new"}},
    {"id": "1", "name": "Open", "statusCategory": {"id": 2, "key": "new"}},
    {"id": "3", "name": "In Progress", "statusCategory": {"id": 4, "key": "indeterminate"}},
    {"id": "4", "name": "Reopened", "statusCategory": {"id": 2, "key": "new"}},
    {"id": "5", "name": "Resolved", "statusCategory": {"id": 3, "key": "done"}},
    {"id": "6", "name": "Closed", "statusCategory": {"id": 3, "key": "done"}},
    {"id": "10002", "name": "Done", "statusCategory": {"id": 3, "key": "done"}},
]
_STATUS_BY_NAME = {s["name"]: s for s in JIRA_STATUSES}

_JQL = re.compile(
    r'^project = "(?P<project>[^"]+)" AND updated >= "(?P<since>\d{4}-\d\d-\d\d \d\d:\d\d)"'
    r'(?: AND issuekey > "(?P<after>[^"]+)")?(?: ORDER BY key ASC)?$'
)


def jira_time(ts: datetime, zone: str = "America/Los_Angeles") -> str:
    """Jira's date-time spelling: ``2019-02-15T19:01:52.971-0800``."""
    local = ts.astimezone(ZoneInfo(zone))
    return (
        local.strftime("%Y-%m-%dT%H:%M:%S.")
        + f"{local.microsecond // 1000:03d}"
        + local.strftime("%z")
    )


def _parse_jira(value: str) -> datetime:
    return datetime.fromisoformat(value)


@dataclass
class JiraIssue:
    issue: dict[str, Any]  # id, key, self, fields (REST shape)
    histories: list[dict[str, Any]]  # REST changelog histories, oldest first

    @property
    def key(self) -> str:
        return str(self.issue["key"])

    @property
    def number(self) -> int:
        return int(self.key.rsplit("-", 1)[1])

    @property
    def updated(self) -> datetime:
        return _parse_jira(self.issue["fields"]["updated"])


class FakeJira:
    """Jira issues and the answers of the REST endpoints the backfill uses."""

    def __init__(
        self,
        *,
        api: str = "cloud",
        time_zone: str = "America/Los_Angeles",
        email: str = "bot@example.com",
        api_token: str = "jira-api-token",
        pat: str = "jira-pat",
        embed_limit: int | None = None,
    ) -> None:
        self.api = api
        self.time_zone = time_zone
        self.basic = "Basic " + base64.b64encode(f"{email}:{api_token}".encode()).decode()
        self.bearer = f"Bearer {pat}"
        # Cloud embeds the latest 100 histories in a search; Data Center all of them.
        self.embed_limit = (
            embed_limit if embed_limit is not None else (100 if api == "cloud" else 1_000_000)
        )
        self.issues: dict[str, JiraIssue] = {}
        self.lock = threading.Lock()

    def add(self, issue: JiraIssue) -> None:
        with self.lock:
            self.issues[str(issue.issue["id"])] = issue

    def by_key(self, key: str) -> JiraIssue:
        return next(i for i in self.issues.values() if i.key == key)

    def authorized(self, header: str | None) -> bool:
        return header == (self.basic if self.api == "cloud" else self.bearer)

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        v = "3" if self.api == "cloud" else "2"
        if method == "GET" and path in ("/rest/api/2/myself", f"/rest/api/{v}/myself"):
            return 200, {"accountId": "5c5f880629be9642ba529340", "timeZone": self.time_zone}
        if method == "GET" and path == "/rest/api/2/status":
            return 200, JIRA_STATUSES
        if self.api == "cloud" and method == "GET" and path == "/rest/api/3/search/jql":
            return self._search(query, cloud=True)
        if (
            self.api == "cloud"
            and method == "POST"
            and path == "/rest/api/3/search/approximate-count"
        ):
            status, found = self._select(str((body or {}).get("jql", "")))
            return (status, found) if status != 200 else (200, {"count": len(found)})
        if self.api == "cloud" and path == "/rest/api/2/search":
            return 410, {"errorMessages": ["The requested API has been removed."]}
        if self.api == "datacenter" and method == "GET" and path == "/rest/api/2/search":
            return self._search(query, cloud=False)
        changelog = re.fullmatch(r"/rest/api/3/issue/(\d+)/changelog", path)
        if self.api == "cloud" and method == "GET" and changelog:
            return self._changelog(changelog.group(1), query)
        issue = re.fullmatch(r"/rest/api/2/issue/(\d+)", path)
        if self.api == "datacenter" and method == "GET" and issue:
            found = self.issues.get(issue.group(1))
            if found is None:
                return 404, {"errorMessages": ["Issue does not exist"]}
            return 200, self._issue_json(found, ["status"], expand=True, limit=None)
        return 404, {"errorMessages": [f"no route {method} {path}"]}

    def _select(self, jql: str) -> tuple[int, Any]:
        match = _JQL.match(jql)
        if match is None:
            return 400, {"errorMessages": [f"the fake does not understand JQL {jql!r}"]}
        zone = ZoneInfo(self.time_zone)
        since = datetime.strptime(match["since"], "%Y-%m-%d %H:%M").replace(tzinfo=zone)
        after = match["after"]
        with self.lock:
            issues = list(self.issues.values())
        if after is not None and not any(i.key == after for i in issues):
            # Jira validates issue keys in JQL, even in a range.
            return 400, {
                "errorMessages": [
                    f"An issue with key '{after}' does not exist for field 'issuekey'."
                ]
            }
        bound = int(after.rsplit("-", 1)[1]) if after else -1
        found = [
            i
            for i in issues
            if i.key.rsplit("-", 1)[0] == match["project"]
            and i.updated >= since
            and i.number > bound
        ]
        return 200, sorted(found, key=lambda i: i.number)

    def _search(self, query: dict[str, str], *, cloud: bool) -> tuple[int, Any]:
        status, found = self._select(query.get("jql", ""))
        if status != 200:
            return status, found
        size = min(int(query.get("maxResults", 50)), 100)
        fields = [f for f in query.get("fields", "").split(",") if f]
        expand = "changelog" in query.get("expand", "").split(",")
        if cloud:
            token = query.get("nextPageToken")
            start = int(base64.b64decode(token).decode()) if token else 0
        else:
            start = int(query.get("startAt", 0))
        page = found[start : start + size]
        issues = [self._issue_json(i, fields, expand=expand, limit=self.embed_limit) for i in page]
        if cloud:
            body: dict[str, Any] = {"issues": issues, "isLast": start + size >= len(found)}
            if start + size < len(found):
                body["nextPageToken"] = base64.b64encode(str(start + size).encode()).decode()
            return 200, body
        return 200, {"startAt": start, "maxResults": size, "total": len(found), "issues": issues}

    def _issue_json(
        self, issue: JiraIssue, fields: list[str], *, expand: bool, limit: int | None
    ) -> dict[str, Any]:
        out = {k: v for k, v in issue.issue.items() if k != "fields"}
        all_fields = issue.issue["fields"]
        out["fields"] = {k: all_fields.get(k) for k in fields} if fields else dict(all_fields)
        if expand:
            histories = issue.histories
            if limit is not None and len(histories) > limit:
                embedded = list(reversed(histories))[:limit]  # newest first, like Cloud
            else:
                embedded = list(histories)
            out["changelog"] = {
                "startAt": 0,
                "maxResults": len(embedded),
                "total": len(histories),
                "histories": embedded,
            }
        return out

    def _changelog(self, issue_id: str, query: dict[str, str]) -> tuple[int, Any]:
        found = self.issues.get(issue_id)
        if found is None:
            return 404, {"errorMessages": ["Issue does not exist or you do not have permission"]}
        start = int(query.get("startAt", 0))
        size = min(int(query.get("maxResults", 100)), 100)
        values = found.histories[start : start + size]
        return 200, {
            "self": f"/rest/api/3/issue/{issue_id}/changelog?startAt={start}",
            "maxResults": size,
            "startAt": start,
            "total": len(found.histories),
            "isLast": start + size >= len(found.histories),
            "values": values,
        }


def jira_issue_from_webhooks(*paths: str) -> JiraIssue:
    """An issue as the REST API shows it, rebuilt from recorded webhook bodies.

    The last body's ``issue`` is the current state; every ``jira:issue_updated``
    body's changelog is one history, stamped with that body's recorded
    ``issue.fields.updated``.
    """
    bodies = [load_fixture(p) for p in paths]
    histories = []
    for body in bodies:
        changelog = body.get("changelog")
        if (
            body["webhookEvent"] != "jira:issue_updated"
            or not changelog
            or not changelog.get("items")
        ):
            continue
        histories.append(
            {
                "id": str(changelog["id"]),
                "author": body.get("user"),
                "created": body["issue"]["fields"]["updated"],
                "items": changelog["items"],
            }
        )
    latest = max(bodies, key=lambda b: b["timestamp"])
    issue = copy.deepcopy(latest["issue"])
    histories.sort(key=lambda h: _parse_jira(h["created"]))
    return JiraIssue(issue, histories)


TES41_FILES = (
    "jira/issue_created/cloud_TES-41_created.json",
    "jira/issue_updated/cloud_TES-41_summary_changed.json",
    "jira/issue_updated/cloud_TES-41_description_changed.json",
    "jira/issue_updated/cloud_TES-41_status_todo_to_inprogress.json",
    "jira/issue_updated/cloud_TES-41_status_inprogress_to_done.json",
    "jira/issue_updated/cloud_TES-41_status_done_to_todo.json",
)
TES4_FILES = (
    "jira/issue_updated/server_TES-4_status_inprogress_to_resolved.json",
    "jira/issue_updated/server_TES-4_status_resolved_to_reopened.json",
    "jira/issue_updated/server_TES-4_status_reopened_to_inprogress.json",
    "jira/issue_updated/server_TES-4_status_resolved_to_closed.json",
)


def tes4_with_gap_filled() -> JiraIssue:
    """TES-4 from the recorded Server bodies, plus the change no webhook recorded
    (In Progress → Resolved, resolutiondate 03:03:02.179 UTC; README "Reading a
    status change"): the REST changelog has it."""
    issue = jira_issue_from_webhooks(*TES4_FILES)
    issue.histories.append(
        {
            "id": "10510",
            "created": "2019-08-14T11:03:02.179+0800",
            "items": [
                {
                    "field": "status",
                    "fieldtype": "jira",
                    "from": "3",
                    "fromString": "In Progress",
                    "to": "5",
                    "toString": "Resolved",
                },
                {
                    "field": "resolution",
                    "fieldtype": "jira",
                    "from": None,
                    "fromString": None,
                    "to": "10000",
                    "toString": "Done",
                },
            ],
        }
    )
    issue.histories.sort(key=lambda h: _parse_jira(h["created"]))
    return issue


def synthetic_jira_issue(
    number: int,
    *,
    project: str = "FLOW",
    created: datetime,
    path: tuple[str, ...] = ("To Do", "In Progress", "Done"),
    step: timedelta = timedelta(hours=5),
    other_histories: int = 0,
    zone: str = "America/Los_Angeles",
) -> JiraIssue:
    """A copy of the recorded TES-41 issue as ``<project>-<number>``, walking ``path``.

    ``other_histories`` non-status histories (priority flips) are interleaved,
    which is how a 5,000-entry changelog is made.
    """
    template = load_fixture("jira/issue_updated/cloud_TES-41_status_todo_to_inprogress.json")
    issue = copy.deepcopy(template["issue"])
    issue_id = str(200_000 + number)
    site = issue["self"].split("/rest/api/")[0]
    issue["id"], issue["key"] = issue_id, f"{project}-{number}"
    issue["self"] = f"{site}/rest/api/2/issue/{issue_id}"
    fields = issue["fields"]
    fields["project"] = {**fields["project"], "key": project, "name": project}
    fields["summary"] = f"Synthetic issue {number}"
    fields["created"] = jira_time(created, zone)
    moves = list(pairwise(path))
    total = len(moves) + other_histories
    # Status moves spread evenly among the other histories; the whole walk takes
    # ``step`` per status move.
    at_move = {round((k + 1) * total / len(moves)) - 1: move for k, move in enumerate(moves)}
    tick = step * len(moves) / total if total else step
    histories: list[dict[str, Any]] = []
    at = created
    for n in range(total):
        at += tick
        hid = str(1_000_000 + number * 10_000 + n) if total < 10_000 else f"{number}{n:06d}"
        if n in at_move:
            src, dst = at_move[n]
            items = [
                {
                    "field": "status",
                    "fieldtype": "jira",
                    "fieldId": "status",
                    "from": _STATUS_BY_NAME[src]["id"],
                    "fromString": src,
                    "to": _STATUS_BY_NAME[dst]["id"],
                    "toString": dst,
                }
            ]
        else:
            low = n % 2 == 0
            items = [
                {
                    "field": "priority",
                    "fieldtype": "jira",
                    "fieldId": "priority",
                    "from": "2" if low else "4",
                    "fromString": "High" if low else "Low",
                    "to": "4" if low else "2",
                    "toString": "Low" if low else "High",
                }
            ]
        histories.append({"id": hid, "created": jira_time(at, zone), "items": items})
    status = _STATUS_BY_NAME[path[-1]]
    fields["status"] = {
        **fields["status"],
        "name": status["name"],
        "id": status["id"],
        "statusCategory": {**fields["status"]["statusCategory"], **status["statusCategory"]},
    }
    fields["updated"] = jira_time(at, zone)
    return JiraIssue(issue, histories)


def status_moves(issue: JiraIssue) -> int:
    """How many status items the issue's changelog has."""
    return sum(
        1 for h in issue.histories for i in h["items"] if str(i["field"]).lower() == "status"
    )


# --------------------------------------------------------------------------- GitHub


@dataclass
class GitHubRepoData:
    meta: dict[str, Any]
    issues: list[dict[str, Any]] = field(default_factory=list)  # issue view, PRs included
    pulls: dict[int, dict[str, Any]] = field(default_factory=dict)
    reviews: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    pr_commits: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    commits: list[dict[str, Any]] = field(default_factory=list)
    deployments: list[dict[str, Any]] = field(default_factory=list)
    statuses: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # oldest first
    runs: list[dict[str, Any]] = field(default_factory=list)


def _gh_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class FakeGitHub:
    """Repositories and the answers of the REST endpoints the backfill uses."""

    def __init__(
        self,
        *,
        token: str = "ghp-test-token",
        app_public_key: str | None = None,
        app_id: str = "4242",
        installation_id: str = "777",
    ) -> None:
        self.tokens = {token}
        self.app_public_key = app_public_key
        self.app_id = app_id
        self.installation_id = installation_id
        self.repos: dict[str, GitHubRepoData] = {}
        self.minted = 0
        self.lock = threading.Lock()

    def repo(self, full_name: str, default_branch: str = "master") -> GitHubRepoData:
        key = full_name.lower()
        if key not in self.repos:
            owner, name = full_name.split("/")
            self.repos[key] = GitHubRepoData(
                meta={
                    "id": 1296269,
                    "name": name,
                    "full_name": full_name,
                    "owner": {"login": owner},
                    "default_branch": default_branch,
                }
            )
        return self.repos[key]

    def add_pull(
        self,
        full_name: str,
        pr: dict[str, Any],
        reviews: Sequence[dict[str, Any]] = (),
        commits: Sequence[dict[str, Any]] = (),
    ) -> None:
        data = self.repo(full_name)
        number = int(pr["number"])
        data.pulls[number] = pr
        data.reviews[number] = list(reviews)
        data.pr_commits[number] = list(commits)
        view = {
            k: pr[k]
            for k in (
                "id",
                "number",
                "title",
                "user",
                "labels",
                "state",
                "created_at",
                "updated_at",
                "closed_at",
                "body",
                "html_url",
            )
            if k in pr
        }
        view["pull_request"] = {"url": pr.get("url"), "merged_at": pr.get("merged_at")}
        data.issues.append(view)

    def authorized(self, header: str | None) -> bool:
        return header is not None and header.startswith("Bearer ") and header[7:] in self.tokens

    def mint(self, header: str | None, installation: str) -> tuple[int, Any]:
        import jwt

        if self.app_public_key is None or installation != self.installation_id:
            return 404, {"message": "Not Found"}
        try:
            claims = jwt.decode((header or "")[7:], self.app_public_key, algorithms=["RS256"])
        except jwt.PyJWTError as exc:
            return 401, {"message": f"A JSON web token could not be decoded: {exc}"}
        if str(claims.get("iss")) != self.app_id or claims["exp"] - claims["iat"] > 600:
            return 401, {"message": "'Issuer' claim or expiry is wrong"}
        with self.lock:
            self.minted += 1
            token = f"ghs_installation_{self.minted}"
            self.tokens.add(token)
        expires = datetime.now(UTC) + timedelta(hours=1)
        return 201, {"token": token, "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}

    def handle(
        self, base: str, method: str, path: str, query: dict[str, str]
    ) -> tuple[int, Any, dict[str, str]]:
        if method == "GET" and path == "/search/issues":
            repo = re.search(r"repo:(\S+)", query.get("q", ""))
            data = self.repos.get(repo.group(1).lower()) if repo else None
            return 200, {"total_count": len(data.issues) if data else 0, "items": []}, {}
        m = re.fullmatch(r"/repos/([^/]+/[^/]+)(/.*)?", path)
        if method != "GET" or m is None or m.group(1).lower() not in self.repos:
            return 404, {"message": "Not Found"}, {}
        data, rest = self.repos[m.group(1).lower()], m.group(2) or ""
        if rest == "":
            return 200, data.meta, {}
        if rest == "/issues":
            since = _gh_time(query["since"]) if "since" in query else None
            items = [i for i in data.issues if since is None or _gh_time(i["updated_at"]) >= since]
            items.sort(
                key=lambda i: (i["created_at"], i["number"]),
                reverse=query.get("direction", "desc") == "desc",
            )
            return self._paged(base, path, query, items)
        pr = re.fullmatch(r"/pulls/(\d+)(/reviews|/commits)?", rest)
        if pr:
            number = int(pr.group(1))
            if number not in data.pulls:
                return 404, {"message": "Not Found"}, {}
            if pr.group(2) == "/reviews":
                return self._paged(base, path, query, data.reviews[number])
            if pr.group(2) == "/commits":
                return self._paged(base, path, query, data.pr_commits[number])
            return 200, data.pulls[number], {}
        if rest == "/commits":
            since = _gh_time(query["since"]) if "since" in query else None
            until = _gh_time(query["until"]) if "until" in query else None
            items = [
                c
                for c in data.commits
                if (since is None or _gh_time(c["commit"]["committer"]["date"]) >= since)
                and (until is None or _gh_time(c["commit"]["committer"]["date"]) <= until)
            ]
            items.sort(key=lambda c: c["commit"]["committer"]["date"], reverse=True)
            return self._paged(base, path, query, items)
        if rest == "/deployments":
            items = sorted(data.deployments, key=lambda d: d["id"], reverse=True)
            return self._paged(base, path, query, items)
        statuses = re.fullmatch(r"/deployments/(\d+)/statuses", rest)
        if statuses:
            return self._paged(
                base, path, query, list(reversed(data.statuses.get(int(statuses.group(1)), [])))
            )
        if rest == "/actions/runs":
            lo, _, hi = query.get("created", "..").partition("..")
            items = [
                r
                for r in data.runs
                if (not lo or _gh_time(r["created_at"]) >= _gh_time(lo))
                and (not hi or _gh_time(r["created_at"]) <= _gh_time(hi))
            ]
            items.sort(key=lambda r: r["id"], reverse=True)
            status, page, headers = self._paged(base, path, query, items)
            return status, {"total_count": len(items), "workflow_runs": page}, headers
        return 404, {"message": "Not Found"}, {}

    @staticmethod
    def _paged(
        base: str, path: str, query: dict[str, str], items: list[Any]
    ) -> tuple[int, Any, dict[str, str]]:
        size = min(int(query.get("per_page", 30)), 100)
        page = int(query.get("page", 1))
        chunk = items[(page - 1) * size : page * size]
        links = []
        if page * size < len(items):
            links.append(f'<{base}{path}?{urlencode({**query, "page": page + 1})}>; rel="next"')
            last = math.ceil(len(items) / size)
            links.append(f'<{base}{path}?{urlencode({**query, "page": last})}>; rel="last"')
        return 200, chunk, ({"link": ", ".join(links)} if links else {})


def github_pull_request(
    repo: str,
    number: int,
    *,
    created: datetime,
    merged: datetime | None = None,
    closed: datetime | None = None,
    head_sha: str | None = None,
) -> dict[str, Any]:
    """The recorded ``pull_request/opened.json`` PR, renumbered, re-timed, maybe merged."""
    pr = copy.deepcopy(load_fixture("github/pull_request/opened.json")["pull_request"])
    stamp = lambda t: t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    owner = repo.split("/")[0]
    pr.update(
        {
            "id": 279147437 + number,
            "number": number,
            "title": f"Synthetic change {number}",
            "url": f"https://api.github.com/repos/{repo}/pulls/{number}",
            "html_url": f"https://github.com/{repo}/pull/{number}",
            "created_at": stamp(created),
            "updated_at": stamp(merged or closed or created),
            "state": "closed" if (merged or closed) else "open",
            "closed_at": stamp(merged or closed) if (merged or closed) else None,
            "merged_at": stamp(merged) if merged else None,
            "merged": merged is not None,
            "merge_commit_sha": f"{number:040x}" if merged else pr["merge_commit_sha"],
            "draft": False,
        }
    )
    pr["user"] = {**pr["user"], "login": owner}
    if head_sha:
        pr["head"] = {**pr["head"], "sha": head_sha}
    return pr


def github_commit(
    repo: str, sha: str, *, at: datetime, parent: str | None, message: str = "Synthetic commit"
) -> dict[str, Any]:
    """A ``GET /commits`` item (the REST shape; fields as in the recorded push commit)."""
    recorded = load_fixture("github/push/branch_push.json")["commits"][0]
    when = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    person = {
        "name": recorded["author"]["name"],
        "email": recorded["author"]["email"],
        "date": when,
    }
    return {
        "sha": sha,
        "commit": {"author": person, "committer": dict(person), "message": message},
        "author": {"login": recorded["author"]["username"]},
        "committer": {"login": recorded["author"]["username"]},
        "parents": [{"sha": parent}] if parent else [],
        "html_url": f"https://github.com/{repo}/commit/{sha}",
    }


# --------------------------------------------------------------------------- server


class FakeSources:
    """The HTTP server; ``with FakeSources(jira=..., github=...) as fake: fake.url``."""

    def __init__(
        self,
        *,
        jira: FakeJira | None = None,
        github: FakeGitHub | None = None,
        faults: Faults | None = None,
        port: int = 0,
    ) -> None:
        self.jira = jira
        self.github = github
        self.faults = faults or Faults()
        self.limits = _Limits(self.faults)
        self.served: list[Served] = []
        self._served_lock = threading.Lock()
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.fake = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeSources:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            name="fake-sources",
            kwargs={"poll_interval": 0.05},
            daemon=True,
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def log(self, entry: Served) -> None:
        with self._served_lock:
            self.served.append(entry)

    def requests(self, path_part: str = "", outcome: str | None = None) -> list[Served]:
        with self._served_lock:
            return [
                s
                for s in self.served
                if path_part in s.path and (outcome is None or s.outcome == outcome)
            ]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeSources


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without TCP_NODELAY, Nagle + the
    # client's delayed ACK stall every keep-alive answer by ~40 ms.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def _answer(self, method: str) -> None:
        fake = self.server.fake
        arrived = time.time()
        parts = urlsplit(self.path)
        path, query = parts.path, dict(parse_qsl(parts.query))
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = orjson.loads(raw) if raw else None
        jira = path.startswith("/rest/api/")

        def send(
            status: int,
            payload: Any,
            outcome: str,
            headers: dict[str, str] | None = None,
            until: float = 0.0,
        ) -> None:
            data = orjson.dumps(payload)
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            fake.log(Served(arrived, method, path, query, status, outcome, until))

        delay = fake.faults.latency_s + (
            fake.faults.changelog_latency_s if path.endswith("/changelog") else 0.0
        )
        if delay:
            time.sleep(delay)
        general = fake.limits.general()
        if general == "drop":
            fake.log(Served(arrived, method, path, query, 0, "drop"))
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if general == "error":
            send(fake.faults.error_status, {"message": "upstream hiccup"}, "error")
            return
        if jira:
            if fake.jira is None:
                send(404, {"errorMessages": ["no Jira here"]}, "client")
                return
            if not fake.jira.authorized(self.headers.get("authorization")):
                send(401, {"errorMessages": ["You are not authenticated."]}, "auth")
                return
            wait = fake.limits.jira(arrived)
            if wait is not None:
                send(
                    429,
                    {"errorMessages": ["Rate limit exceeded."]},
                    "429",
                    {"retry-after": str(max(math.ceil(wait), 1))},
                    until=arrived + wait,
                )
                return
            status, payload = fake.jira.handle(method, path, query, body)
            send(status, payload, "ok" if status < 400 else "client")
            return
        if fake.github is None:
            send(404, {"message": "Not Found"}, "client")
            return
        token_route = re.fullmatch(r"/app/installations/([^/]+)/access_tokens", path)
        if method == "POST" and token_route:
            status, payload = fake.github.mint(
                self.headers.get("authorization"), token_route.group(1)
            )
            send(status, payload, "ok" if status < 400 else "auth")
            return
        if not fake.github.authorized(self.headers.get("authorization")):
            send(401, {"message": "Bad credentials"}, "auth")
            return
        refused, headers = fake.limits.github(arrived)
        if refused == "primary":
            send(
                403,
                {"message": "API rate limit exceeded for installation ID 777."},
                "primary",
                headers,
                until=float(headers["x-ratelimit-reset"]),
            )
            return
        if refused == "secondary":
            send(
                403,
                {
                    "message": "You have exceeded a secondary rate limit. Please wait a few "
                    "minutes before you try again."
                },
                "secondary",
                headers,
                until=arrived + float(headers["retry-after"]),
            )
            return
        status, payload, extra = fake.github.handle(fake.url, method, path, query)
        send(status, payload, "ok" if status < 400 else "client", {**headers, **extra})


# ------------------------------------------------------------------------------ CLI


def _volume_jira(
    count: int, *, histories: int = 3, api: str = "cloud", embed_limit: int | None = None
) -> FakeJira:
    jira = FakeJira(api=api, embed_limit=embed_limit)
    start = datetime(2024, 3, 1, tzinfo=UTC)
    for n in range(1, count + 1):
        jira.add(
            synthetic_jira_issue(
                n, created=start + timedelta(minutes=n), other_histories=max(histories - 2, 0)
            )
        )
    return jira


def _main() -> None:
    parser = argparse.ArgumentParser(description="serve a fake Jira for measurements")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--issues", type=int, default=1000)
    parser.add_argument("--histories", type=int, default=3, help="changelog entries per issue")
    parser.add_argument("--api", choices=("cloud", "datacenter"), default="cloud")
    parser.add_argument(
        "--embed-limit",
        type=int,
        default=None,
        help="histories embedded in a search (0: changelogs paged per issue)",
    )
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per answer")
    args = parser.parse_args()
    jira = _volume_jira(
        args.issues, histories=args.histories, api=args.api, embed_limit=args.embed_limit
    )
    faults = Faults(latency_s=args.latency)
    with FakeSources(jira=jira, faults=faults, port=args.port) as fake:
        print(f"fake Jira ({args.api}) with {args.issues} issues at {fake.url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    _main()


# ---------------------------------------------------------------- test wiring helpers


def backfill_settings(base: Any, fake: FakeSources, **overrides: Any) -> Any:
    """``base`` (a pipeline's Settings) pointed at ``fake``, with test-sized waits:
    backoff from 10 ms, no single sleep over 3 s, small pages."""
    from pydantic import SecretStr

    options: dict[str, Any] = {
        "jira_base_url": fake.url,
        "jira_email": "bot@example.com",
        "jira_api_token": SecretStr("jira-api-token"),
        "jira_pat": None,
        "github_api_url": fake.url,
        "github_token": SecretStr("ghp-test-token"),
        "backfill_page_size": 10,
        "backfill_concurrency": 4,
        "backfill_backoff_base_s": 0.01,
        "backfill_max_sleep_s": 3.0,
        "backfill_timeout_s": 5.0,
    }
    options.update(overrides)
    return base.model_copy(update=options)


def backfill_env(settings: Any, database_url: str, kafka_bootstrap: str) -> dict[str, str]:
    """The FLOW_* environment a ``flowmetrics backfill`` subprocess needs."""
    secret = lambda v: v.get_secret_value() if v is not None else ""  # noqa: E731
    return {
        "FLOW_ENV": "development",
        "FLOW_DATABASE_URL": database_url,
        "FLOW_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "FLOW_KAFKA_IDEMPOTENT_PRODUCER": "1" if settings.kafka_idempotent_producer else "0",
        "FLOW_TOPIC_PREFIX": settings.topic_prefix,
        "FLOW_JIRA_BASE_URL": settings.jira_base_url,
        "FLOW_JIRA_EMAIL": settings.jira_email,
        "FLOW_JIRA_API_TOKEN": secret(settings.jira_api_token),
        "FLOW_BACKFILL_PAGE_SIZE": str(settings.backfill_page_size),
        "FLOW_BACKFILL_CONCURRENCY": str(settings.backfill_concurrency),
        "FLOW_BACKFILL_BACKOFF_BASE_S": str(settings.backfill_backoff_base_s),
        "FLOW_BACKFILL_MAX_SLEEP_S": str(settings.backfill_max_sleep_s),
        "FLOW_LOG_JSON": "1",
    }
