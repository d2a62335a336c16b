"""Real GitHub webhook bodies (``../shared/fixtures/github``), rewritten per scenario.

Each method loads one recorded body and rewrites only what a scenario needs —
repository, ids, SHAs, refs, times, labels, text — leaving the rest of GitHub's
payload as recorded. It returns ``(event name, body)`` for
:meth:`tests.pipeline.Pipeline.post_github`.
"""

from __future__ import annotations

import copy
import hashlib
from datetime import UTC, datetime
from typing import Any

from tests.fixtures import load_fixture

ZERO_SHA = "0" * 40
Delivery = tuple[str, dict[str, Any]]


def sha(name: str) -> str:
    """A stable 40-hex SHA for a readable commit name."""
    return hashlib.sha1(name.encode()).hexdigest()


def iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _repository(body: dict[str, Any], repo: str) -> None:
    owner, name = repo.split("/")
    body["repository"]["full_name"] = repo
    body["repository"]["name"] = name
    body["repository"]["owner"]["login"] = owner


class GitHubFactory:
    """Deliveries of one repository."""

    def __init__(self, repo: str) -> None:
        self.repo = repo

    def push(
        self,
        branch: str,
        before: str | None,
        commits: list[tuple[str, datetime]],
        *,
        forced: bool = False,
    ) -> Delivery:
        """A push of ``(commit name, commit time)`` to ``branch``; ``before`` a commit name
        (None: the push creates the branch)."""
        body = load_fixture("github/push/branch_push.json")
        _repository(body, self.repo)
        template = body["commits"][0]
        listed = []
        for name, when in commits:
            commit = copy.deepcopy(template)
            commit.update(id=sha(name), tree_id=sha(f"tree:{name}"), message=name,
                          timestamp=iso(when),
                          url=f"https://github.com/{self.repo}/commit/{sha(name)}")
            listed.append(commit)
        body.update(
            ref=f"refs/heads/{branch}",
            before=sha(before) if before else ZERO_SHA,
            after=listed[-1]["id"],
            created=before is None,
            forced=forced,
            commits=listed,
            head_commit=copy.deepcopy(listed[-1]),
            compare=f"https://github.com/{self.repo}/compare/{branch}",
        )
        return "push", body

    def pull_request_merged(
        self,
        number: int,
        *,
        head_ref: str,
        head: str,
        merge: str,
        created: datetime,
        merged: datetime,
        base: str = "main",
    ) -> Delivery:
        body = load_fixture("github/pull_request/closed_merged.json")
        _repository(body, self.repo)
        pr = body["pull_request"]
        body["number"] = pr["number"] = number
        pr.update(
            title=f"PR {number}", created_at=iso(created), updated_at=iso(merged),
            closed_at=iso(merged), merged_at=iso(merged), merge_commit_sha=sha(merge),
            html_url=f"https://github.com/{self.repo}/pull/{number}",
        )
        pr["head"].update(ref=head_ref, sha=sha(head), label=f"x:{head_ref}")
        pr["base"].update(ref=base, label=f"x:{base}")
        return "pull_request", body

    def _deployment(
        self, deployment: dict[str, Any], number: int, commit: str, environment: str,
        created: datetime, rollback_of: int | None,
    ) -> None:
        deployment.update(
            id=number, sha=sha(commit), ref="main", environment=environment,
            original_environment=environment, created_at=iso(created),
            updated_at=iso(created),
            url=f"https://api.github.com/repos/{self.repo}/deployments/{number}",
            payload={"rollback_of": rollback_of} if rollback_of else {},
        )

    def deployment(
        self, number: int, commit: str, created: datetime, *,
        environment: str = "production", rollback_of: int | None = None,
    ) -> Delivery:
        body = load_fixture("github/deployment/created.json")
        _repository(body, self.repo)
        self._deployment(body["deployment"], number, commit, environment, created, rollback_of)
        return "deployment", body

    def deployment_status(
        self, number: int, status_id: int, state: str, when: datetime, *,
        commit: str, created: datetime, environment: str = "production",
        rollback_of: int | None = None,
    ) -> Delivery:
        """A status of deployment ``number`` (created at ``created`` for ``commit``)."""
        body = load_fixture("github/deployment_status/created_success.json")
        _repository(body, self.repo)
        self._deployment(body["deployment"], number, commit, environment, created, rollback_of)
        body["deployment"]["updated_at"] = iso(when)
        body["deployment_status"].update(
            id=status_id, state=state, environment=environment, created_at=iso(when),
            updated_at=iso(when),
            url=f"https://api.github.com/repos/{self.repo}/deployments/{number}"
                f"/statuses/{status_id}",
        )
        return "deployment_status", body

    def incident_opened(self, number: int, opened: datetime, *, body: str = "") -> Delivery:
        """An issue labelled ``incident`` opened."""
        payload = load_fixture("github/issues/opened.json")
        _repository(payload, self.repo)
        self._incident(payload["issue"], number, opened, body)
        return "issues", payload

    def incident_closed(self, number: int, opened: datetime, closed: datetime) -> Delivery:
        payload = load_fixture("github/issues/closed.json")
        _repository(payload, self.repo)
        issue = payload["issue"]
        self._incident(issue, number, opened, "")
        issue.update(state="closed", closed_at=iso(closed), updated_at=iso(closed))
        return "issues", payload

    def _incident(self, issue: dict[str, Any], number: int, opened: datetime, text: str) -> None:
        label = {**copy.deepcopy(issue["labels"][0]), "name": "incident"}
        issue.update(
            number=number, title=f"Incident {number}", body=text, labels=[label],
            created_at=iso(opened), updated_at=iso(opened),
            html_url=f"https://github.com/{self.repo}/issues/{number}",
        )

    def workflow_run(self, name: str, commit: str, when: datetime) -> Delivery:
        body = load_fixture("github/workflow_run/completed.json")
        _repository(body, self.repo)
        body["workflow_run"].update(name=name, head_sha=sha(commit), updated_at=iso(when),
                                    created_at=iso(when), run_started_at=iso(when))
        return "workflow_run", body
