"""The DORA fold: hand-computed cases, and order/duplication independence."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.dora import (
    DoraConfig,
    DoraEvent,
    ServiceProjection,
    fold_service,
)
from schemas.events import (
    ChangeCommitted,
    DeploymentRecorded,
    DeploymentStatus,
    IncidentOpened,
    IncidentResolved,
    PullRequestEvent,
    stable_event_id,
)
from schemas.topics import partition_key

T0 = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday
SHOP = "acme/shop"
CONFIG = DoraConfig()


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def sha(name: str) -> str:
    """A 40-hex SHA per readable name (``c1`` → ``c1c1…``), so rows read like the case."""
    hexed = name.encode().hex()
    return (hexed * (40 // len(hexed) + 1))[:40]


@dataclass
class Events:
    """Canonical events of one scenario, shaped as the GitHub normalizer emits them."""

    repo: str = SHOP
    service: str = SHOP
    all: list[DoraEvent] = field(default_factory=list)

    def _add(self, model: type[Any], ids: tuple[object, ...], when: datetime, **data: Any) -> Any:
        draft = model(event_id=stable_event_id("test", *ids), source="github", occurred_at=when,
                      received_at=when, key="-", **data)
        event = draft.model_copy(update={"key": partition_key(draft)})
        self.all.append(event)
        return event

    def push(self, branch: str, before: str | None, *commits: tuple[str, float],
             forced: bool = False, repo: str | None = None) -> None:
        head = sha(commits[-1][0])
        for name, hours in commits:
            self._add(ChangeCommitted, ("commit", name, head), at(hours), repo=repo or self.repo,
                      sha=sha(name), authored_at=at(hours), committed_at=at(hours),
                      branch=branch, head_sha=head, before_sha=sha(before) if before else None,
                      forced=forced)

    def merged(self, number: int, head: str, merge: str, hours: float, *,
               base: str = "main", commit_shas: tuple[str, ...] = ()) -> None:
        self._add(PullRequestEvent, ("pr", number), at(hours), type="pull_request.merged",
                  repo=self.repo, number=number, item_id=f"github:{self.repo}#{number}",
                  head_sha=sha(head), merge_commit_sha=sha(merge), base_branch=base,
                  created_at=at(hours - 10), merged_at=at(hours),
                  commit_shas=tuple(sha(c) for c in commit_shas))

    def deploy(self, number: int, commit: str, hours: float, *statuses: tuple[str, float],
               env: str = "production", rollback_of: int | None = None,
               repo: str | None = None, service: str | None = None) -> str:
        repo = repo or self.repo
        deployment_id = f"{repo}:{number}"
        common: dict[str, Any] = dict(
            deployment_id=deployment_id, repo=repo, service=service or self.service,
            environment=env, sha=sha(commit), started_at=at(hours),
            url=f"https://api.github.com/repos/{repo}/deployments/{number}",
            rollback_of=f"{repo}:{rollback_of}" if rollback_of else None,
        )
        self._add(DeploymentRecorded, ("deployment", deployment_id), at(hours),
                  status="pending", **common)
        for state, when in statuses:
            status: DeploymentStatus = state  # type: ignore[assignment]
            terminal = state in ("success", "failure", "error")
            self._add(DeploymentRecorded, ("status", deployment_id, state, when), at(when),
                      status=status, finished_at=at(when) if terminal else None, **common)
        return deployment_id

    def incident(self, number: int, opened: float, resolved: float | None = None, *,
                 body: str = "", root_cause: str | None = None, url: str | None = None,
                 service: str | None = None) -> str:
        incident_id = f"{self.repo}#{number}"
        svc = service or self.service
        self._add(IncidentOpened, ("incident", number), at(opened), incident_id=incident_id,
                  repo=self.repo, service=svc, title=f"incident {number}", body=body,
                  opened_at=at(opened), root_cause_sha=sha(root_cause)[:12] if root_cause
                  else None, deployment_url=url)
        if resolved is not None:
            self._add(IncidentResolved, ("resolved", number, resolved), at(resolved),
                      incident_id=incident_id, service=svc, resolved_at=at(resolved))
        return incident_id


def fold(events: Events | list[DoraEvent], service: str = SHOP,
         config: DoraConfig = CONFIG) -> ServiceProjection:
    return fold_service(service, events.all if isinstance(events, Events) else events, config)


def lead_hours(p: ServiceProjection) -> dict[str, tuple[str, float | None]]:
    """sha name → (deployment number, lead time in hours) for every change row."""
    return {
        c.sha: (c.deployment_id.rsplit(":", 1)[1],
                None if c.lead_time_s is None else c.lead_time_s / 3600)
        for c in p.changes
    }


def deployment(p: ServiceProjection, number: int) -> Any:
    return next(d for d in p.deployments if d.deployment_id.endswith(f":{number}"))


# --- deployments --------------------------------------------------------------------


def test_inactive_does_not_erase_success() -> None:
    """GitHub marks an older deployment inactive when a newer one succeeds: still succeeded."""
    ev = Events()
    ev.deploy(1, "a", 1, ("in_progress", 1.1), ("success", 1.5), ("inactive", 5))
    d = deployment(fold(ev), 1)
    assert (d.succeeded, d.status, d.finished_at, d.failed) == (True, "success", at(1.5), False)


def test_failed_status_is_a_failed_finished_deployment() -> None:
    """failure/error as the latest outcome fails the deployment; it finishes at that status."""
    ev = Events()
    ev.deploy(1, "a", 1, ("error", 2))
    d = deployment(fold(ev), 1)
    assert (d.succeeded, d.failed, d.failure_reason, d.finished_at) == (False, True, "status",
                                                                        at(2))


def test_error_then_success_is_a_success_finished_at_the_success() -> None:
    """A retried deployment's latest outcome counts; it reached production at its success."""
    ev = Events()
    ev.deploy(1, "a", 1, ("error", 2), ("success", 3))
    d = deployment(fold(ev), 1)
    assert (d.succeeded, d.failed, d.finished_at) == (True, False, at(3))


def test_pending_deployment_is_not_finished() -> None:
    """A deployment without an outcome has no finish time and no failure."""
    ev = Events()
    ev.deploy(1, "a", 1, ("in_progress", 2))
    d = deployment(fold(ev), 1)
    assert (d.status, d.finished_at, d.failed) == ("in_progress", None, False)


@pytest.mark.parametrize(
    ("environment", "production"),
    [("production", True), ("Prod", True), ("PRODUCTION", True), ("staging", False),
     ("preprod", False), ("production-eu", False), ("github-pages", False)],
)
def test_production_is_the_whole_environment_name(environment: str, production: bool) -> None:
    """The default pattern prod|production matches whole names, case-insensitively."""
    ev = Events()
    ev.deploy(1, "a", 1, ("success", 2), env=environment)
    assert deployment(fold(ev), 1).is_production is production


def test_production_pattern_is_configurable() -> None:
    """A wider pattern makes regional environments production too."""
    ev = Events()
    ev.deploy(1, "a", 1, ("success", 2), env="production-eu")
    config = DoraConfig(production_pattern=r"prod(uction)?(-\w+)?")
    assert deployment(fold(ev, config=config), 1).is_production


def test_other_services_deployments_are_not_folded() -> None:
    """Only the service's own deployments become its rows."""
    ev = Events()
    ev.deploy(1, "a", 1, ("success", 2))
    ev.deploy(2, "b", 1, ("success", 2), repo="acme/billing", service="acme/billing")
    assert [d.deployment_id for d in fold(ev).deployments] == ["acme/shop:1"]


# --- lead time ----------------------------------------------------------------------


def test_lead_time_is_per_commit_to_the_first_successful_production_deployment() -> None:
    """Commits of the deployed push and its predecessors, each from its commit time."""
    ev = Events()
    ev.push("main", "base", ("c1", 0), ("c2", 1))
    ev.push("main", "c2", ("c3", 2))
    ev.deploy(1, "c3", 3, ("success", 4))
    assert lead_hours(fold(ev)) == {sha("c1"): ("1", 4.0), sha("c2"): ("1", 3.0),
                                    sha("c3"): ("1", 2.0)}


def test_commits_already_shipped_are_not_shipped_again() -> None:
    """A later deployment contains only what no earlier successful one shipped."""
    ev = Events()
    ev.push("main", "base", ("c1", 0))
    ev.deploy(1, "c1", 1, ("success", 2))
    ev.push("main", "c1", ("c2", 3), ("c3", 4))
    ev.deploy(2, "c3", 5, ("success", 6))
    assert lead_hours(fold(ev)) == {sha("c1"): ("1", 2.0), sha("c2"): ("2", 3.0),
                                    sha("c3"): ("2", 2.0)}


def test_failed_and_staging_deployments_ship_nothing() -> None:
    """Only a successful production deployment starts a change's lead time clock's end."""
    ev = Events()
    ev.push("main", "base", ("c1", 0))
    ev.deploy(1, "c1", 1, ("success", 2), env="staging")
    ev.deploy(2, "c1", 3, ("failure", 4))
    ev.deploy(3, "c1", 5, ("success", 7))
    assert lead_hours(fold(ev)) == {sha("c1"): ("3", 7.0)}


def test_first_deployment_is_by_finish_time_not_arrival() -> None:
    """Out-of-order deployments: the one that finished first ships the commit."""
    ev = Events()
    ev.push("main", "base", ("c1", 0))
    ev.deploy(2, "c1", 5, ("success", 6))
    ev.deploy(1, "c1", 1, ("success", 3))
    assert lead_hours(fold(ev)) == {sha("c1"): ("1", 3.0)}


def test_deploying_a_sha_inside_a_push_ships_the_commits_up_to_it() -> None:
    """A SHA in the middle of a push carries the commits before it, not after."""
    ev = Events()
    ev.push("main", "base", ("c1", 0), ("c2", 1), ("c3", 2))
    ev.deploy(1, "c2", 3, ("success", 4))
    ev.deploy(2, "c3", 5, ("success", 6))
    assert lead_hours(fold(ev)) == {sha("c1"): ("1", 4.0), sha("c2"): ("1", 3.0),
                                    sha("c3"): ("2", 4.0)}


def test_force_push_does_not_reach_the_replaced_commits() -> None:
    """After a force push, `before` is the replaced head: its commits are not ancestors."""
    ev = Events()
    ev.push("main", "base", ("old", 0))
    ev.push("main", "old", ("new", 1), forced=True)
    ev.deploy(1, "new", 2, ("success", 3))
    assert lead_hours(fold(ev)) == {sha("new"): ("1", 2.0)}


def test_squash_merge_counts_the_pull_requests_own_commits() -> None:
    """Squash: the PR branch's commits are the changes; the squash commit carries no lead
    time of its own, so the same work counts the same whatever the merge button."""
    ev = Events()
    ev.push("main", "base", ("m0", 0))
    ev.push("feature", None, ("f1", 1))
    ev.push("feature", "f1", ("f2", 2))
    ev.push("main", "m0", ("squash", 5))
    ev.merged(7, head="f2", merge="squash", hours=5)
    ev.deploy(1, "squash", 6, ("success", 8))
    p = fold(ev)
    assert lead_hours(p) == {sha("m0"): ("1", 8.0), sha("f1"): ("1", 7.0),
                             sha("f2"): ("1", 6.0), sha("squash"): ("1", None)}
    kinds = {c.sha: (c.kind, c.pull_request) for c in p.changes}
    assert kinds[sha("squash")] == ("merge", "github:acme/shop#7")
    assert kinds[sha("f1")] == ("commit", "github:acme/shop#7")


def test_merge_commit_keeps_the_pull_requests_commits_once() -> None:
    """Merge commit: the PR's commits arrive in the base push too; the merge commit itself
    is the PR's vehicle, not a change."""
    ev = Events()
    ev.push("feature", None, ("f1", 1), ("f2", 2))
    ev.push("main", "base", ("f1", 1), ("f2", 2), ("merge", 5))
    ev.merged(7, head="f2", merge="merge", hours=5)
    ev.deploy(1, "merge", 6, ("success", 8))
    assert lead_hours(fold(ev)) == {sha("f1"): ("1", 7.0), sha("f2"): ("1", 6.0),
                                    sha("merge"): ("1", None)}


def test_rebase_merge_counts_the_originals_not_the_copies() -> None:
    """Rebase merge: the rebased copies on the base branch stand for the PR's commits."""
    ev = Events()
    ev.push("feature", None, ("f1", 1), ("f2", 2))
    ev.push("main", "base", ("f1copy", 5), ("f2copy", 5))
    ev.merged(7, head="f2", merge="f2copy", hours=5)
    ev.deploy(1, "f2copy", 6, ("success", 8))
    assert lead_hours(fold(ev)) == {sha("f1"): ("1", 7.0), sha("f2"): ("1", 6.0),
                                    sha("f1copy"): ("1", None), sha("f2copy"): ("1", None)}


def test_squash_of_an_unseen_branch_counts_the_squash_commit() -> None:
    """A PR whose branch pushes never arrived (a fork): the squash commit is the change."""
    ev = Events()
    ev.push("main", "base", ("squash", 5))
    ev.merged(7, head="forkhead", merge="squash", hours=5)
    ev.deploy(1, "squash", 6, ("success", 8))
    assert lead_hours(fold(ev)) == {sha("squash"): ("1", 3.0)}


def test_pull_request_commit_shas_are_contained_too() -> None:
    """A producer that lists the PR's commits (commit_shas) links them without pushes."""
    ev = Events()
    ev.push("main", "base", ("squash", 5))
    ev.push("elsewhere", None, ("x1", 1))
    ev.merged(7, head="forkhead", merge="squash", hours=5, commit_shas=("x1",))
    ev.deploy(1, "squash", 6, ("success", 8))
    assert lead_hours(fold(ev)) == {sha("x1"): ("1", 7.0), sha("squash"): ("1", None)}


def test_branch_deployed_before_its_squash_is_not_shipped_twice() -> None:
    """Deploying the PR branch ships its commits; the later squash deployment adds nothing."""
    ev = Events()
    ev.push("feature", None, ("f1", 1))
    ev.deploy(1, "f1", 2, ("success", 3))
    ev.push("main", "base", ("squash", 5))
    ev.merged(7, head="f1", merge="squash", hours=5)
    ev.deploy(2, "squash", 6, ("success", 8))
    assert lead_hours(fold(ev)) == {sha("f1"): ("1", 2.0), sha("squash"): ("2", None)}


def test_a_deployment_of_many_commits() -> None:
    """Twenty-five commits over two pushes in one deployment: one row each."""
    ev = Events()
    ev.push("main", "base", *((f"a{i}", i) for i in range(20)))
    ev.push("main", "a19", *((f"b{i}", 20 + i) for i in range(5)))
    ev.deploy(1, "b4", 30, ("success", 30))
    leads = lead_hours(fold(ev))
    assert len(leads) == 25
    assert leads[sha("a0")] == ("1", 30.0) and leads[sha("b4")] == ("1", 6.0)


# --- rollbacks ----------------------------------------------------------------------


def test_explicit_rollback_fails_the_rolled_back_deployment() -> None:
    """rollback_of marks its target failed (reason rollback); the rollback itself is fine."""
    ev = Events()
    ev.deploy(1, "a", 1, ("success", 2))
    ev.deploy(2, "b", 3, ("success", 4))
    ev.deploy(3, "a", 5, ("success", 6), rollback_of=2)
    p = fold(ev)
    d2, d3 = deployment(p, 2), deployment(p, 3)
    assert (d2.failed, d2.failure_reason, d2.rolled_back_by) == (True, "rollback",
                                                                 "acme/shop:3")
    assert (d3.failed, deployment(p, 1).failed) == (False, False)


def test_redeploying_an_earlier_sha_rolls_back_the_current_one() -> None:
    """Going back to a SHA deployed before the current one is a rollback of the current."""
    ev = Events()
    ev.deploy(1, "a", 1, ("success", 2))
    ev.deploy(2, "b", 3, ("success", 4))
    ev.deploy(3, "a", 5, ("success", 6))
    p = fold(ev)
    assert (deployment(p, 2).failure_reason, deployment(p, 2).rolled_back_by) == (
        "rollback", "acme/shop:3")
    off = DoraConfig(detect_redeploy_rollbacks=False)
    assert not deployment(fold(ev, config=off), 2).failed


def test_redeploying_the_same_sha_or_another_environment_is_no_rollback() -> None:
    """A re-run of the current SHA, or environments deployed in turn, roll nothing back."""
    ev = Events()
    config = DoraConfig(production_pattern=r"prod-\w+")
    ev.deploy(1, "a", 1, ("success", 2), env="prod-eu")
    ev.deploy(2, "a", 1, ("success", 2), env="prod-us")
    ev.deploy(3, "b", 3, ("success", 4), env="prod-eu")
    ev.deploy(4, "b", 3, ("success", 4), env="prod-us")
    ev.deploy(5, "b", 5, ("success", 6), env="prod-eu")
    assert not any(d.failed for d in fold(ev, config=config).deployments)


# --- incidents ----------------------------------------------------------------------


def incidents(p: ServiceProjection) -> dict[str, tuple[str | None, str | None, float | None]]:
    return {
        i.incident_id: (i.deployment_id, i.attribution,
                        None if i.time_to_restore_s is None else i.time_to_restore_s / 3600)
        for i in p.incidents
    }


def test_incident_inside_the_window_blames_the_latest_production_deployment() -> None:
    """Without a link: the latest successful production deployment finished in the window."""
    ev = Events()
    ev.deploy(1, "a", 1, ("success", 2))
    ev.deploy(2, "b", 3, ("success", 4))
    ev.deploy(3, "c", 5, ("failure", 6))
    ev.deploy(4, "d", 5, ("success", 7), env="staging")
    ev.incident(9, opened=10, resolved=13)
    p = fold(ev)
    assert incidents(p) == {"acme/shop#9": ("acme/shop:2", "window", 3.0)}
    assert (deployment(p, 2).failed, deployment(p, 2).failure_reason) == (True, "incident")


@pytest.mark.parametrize(("opened", "blamed"), [(52, "acme/shop:1"), (52.01, None)])
def test_window_edge_is_inclusive_and_nothing_outside_it(opened: float, blamed: str | None
                                                         ) -> None:
    """Exactly 48 h after the finish still counts; a moment later nothing is blamed."""
    ev = Events()
    ev.deploy(1, "a", 1, ("success", 4))
    ev.incident(9, opened=opened)
    p = fold(ev)
    assert incidents(p)["acme/shop#9"][:2] == (blamed, "window" if blamed else None)
    assert deployment(p, 1).failed is (blamed is not None)


def test_incident_before_any_deployment_blames_none() -> None:
    """A deployment finished after the incident opened cannot have caused it."""
    ev = Events()
    ev.deploy(1, "a", 1, ("success", 4))
    ev.incident(9, opened=3)
    assert incidents(fold(ev))["acme/shop#9"][:2] == (None, None)


def test_window_is_configurable() -> None:
    """incident_window widens or narrows the window."""
    ev = Events()
    ev.deploy(1, "a", 1, ("success", 4))
    ev.incident(9, opened=4 + 60)
    config = DoraConfig(incident_window=timedelta(hours=72))
    assert incidents(fold(ev, config=config))["acme/shop#9"][1] == "window"


def test_root_cause_names_the_deployment_that_first_shipped_the_commit() -> None:
    """'root cause: <sha>' blames the deployment that first shipped it, not the latest."""
    ev = Events()
    ev.push("main", "base", ("c1", 0), ("c2", 0.5))
    ev.deploy(1, "c2", 1, ("success", 2))
    ev.push("main", "c2", ("c3", 3))
    ev.deploy(2, "c3", 3, ("success", 4))
    ev.incident(9, opened=100, resolved=101, root_cause="c1")
    assert incidents(fold(ev))["acme/shop#9"] == ("acme/shop:1", "explicit_sha", 1.0)


def test_deployment_url_names_that_deployment() -> None:
    """A deployment URL in the incident blames that deployment, whenever it finished."""
    ev = Events()
    ev.deploy(1, "a", 1, ("success", 2))
    ev.deploy(2, "b", 3, ("success", 4))
    ev.incident(9, opened=5, url="https://api.github.com/repos/acme/shop/deployments/1")
    assert incidents(fold(ev))["acme/shop#9"][:2] == ("acme/shop:1", "explicit_url")


def test_explicit_link_to_another_service_blames_no_one() -> None:
    """A link that matches nothing in the service attributes nothing (no window fallback)."""
    ev = Events()
    ev.deploy(1, "a", 1, ("success", 2))
    ev.deploy(5, "z", 1, ("success", 2), repo="acme/billing", service="acme/billing")
    ev.incident(9, opened=3, url="https://api.github.com/repos/acme/billing/deployments/5")
    ev.incident(10, opened=3, root_cause="z")
    p = fold(ev)
    assert incidents(p) == {"acme/shop#9": (None, None, None), "acme/shop#10": (None, None, None)}
    assert not deployment(p, 1).failed


def test_incidents_are_never_attributed_across_services() -> None:
    """Another service's later deployment is not a candidate, nor are its incidents ours."""
    ev = Events()
    ev.deploy(1, "a", 1, ("success", 2))
    ev.deploy(5, "z", 1, ("success", 3), repo="acme/billing", service="acme/billing")
    ev.incident(9, opened=4)
    ev.incident(10, opened=4, service="acme/billing")
    assert incidents(fold(ev)) == {"acme/shop#9": ("acme/shop:1", "window", None)}
    billing = fold(ev, service="acme/billing")
    assert incidents(billing) == {"acme/shop#10": ("acme/billing:5", "window", None)}


def test_reopened_incident_is_restored_at_its_final_resolution() -> None:
    """Time to restore runs to the last resolution; reopened and not resolved: none."""
    ev = Events()
    ev.incident(9, opened=0, resolved=2)
    ev._add(IncidentOpened, ("reopen", 9), at(3), incident_id="acme/shop#9", repo=SHOP,
            service=SHOP, opened_at=at(0))
    assert incidents(fold(ev))["acme/shop#9"][2] is None
    ev._add(IncidentResolved, ("resolved-again", 9), at(5), incident_id="acme/shop#9",
            service=SHOP, resolved_at=at(5))
    assert incidents(fold(ev))["acme/shop#9"][2] == 5.0


def test_incident_resolved_before_seen_open_has_no_row_yet() -> None:
    """Without an opening there is no start; the row appears when the opening arrives."""
    ev = Events()
    ev._add(IncidentResolved, ("resolved", 9), at(5), incident_id="acme/shop#9",
            service=SHOP, resolved_at=at(5))
    assert fold(ev).incidents == ()


def test_teams_map_repositories_and_services() -> None:
    """A repository is its own team unless the configuration maps it (or its service)."""
    ev = Events()
    ev.deploy(1, "a", 1, ("success", 2))
    assert deployment(fold(ev), 1).team == SHOP
    config = DoraConfig(teams={SHOP: "checkout"})
    assert deployment(fold(ev, config=config), 1).team == "checkout"


# --- any order, any duplication -----------------------------------------------------


def rich_scenario() -> list[DoraEvent]:
    """Pushes, a squash PR, a rollback, statuses incl. inactive, incidents of two services."""
    ev = Events()
    ev.push("main", "base", ("c1", 0), ("c2", 1))
    ev.deploy(1, "c2", 2, ("in_progress", 2.5), ("success", 3), ("inactive", 9))
    ev.push("feature", None, ("f1", 4))
    ev.push("feature", "f1", ("f2", 5))
    ev.push("main", "c2", ("squash", 8))
    ev.merged(7, head="f2", merge="squash", hours=8)
    ev.deploy(2, "squash", 8.5, ("success", 9), ("inactive", 12))
    ev.push("main", "squash", ("c3", 10))
    ev.deploy(3, "c3", 11, ("success", 12))
    ev.deploy(4, "squash", 13, ("success", 14), rollback_of=3)
    ev.deploy(5, "c3", 15, ("error", 16))
    ev.deploy(6, "c3", 15, ("success", 16), env="staging")
    ev.deploy(8, "z", 1, ("success", 15), repo="acme/billing", service="acme/billing")
    ev.incident(20, opened=15, resolved=18)
    ev.incident(21, opened=200, resolved=210)
    ev.incident(22, opened=17, resolved=17.5, root_cause="c1")
    ev.incident(23, opened=16, service="acme/billing")
    return ev.all


def test_rich_scenario_by_hand() -> None:
    """The hand-computed rows of the scenario the property test shuffles."""
    p = fold(rich_scenario())
    assert lead_hours(p) == {
        sha("c1"): ("1", 3.0), sha("c2"): ("1", 2.0),
        sha("f1"): ("2", 5.0), sha("f2"): ("2", 4.0), sha("squash"): ("2", None),
        sha("c3"): ("3", 2.0),
    }
    failed = {d.deployment_id.rsplit(":", 1)[1]: d.failure_reason for d in p.deployments
              if d.failed}
    assert failed == {"3": "rollback", "5": "status", "4": "incident", "1": "incident"}
    assert incidents(p) == {
        "acme/shop#20": ("acme/shop:4", "window", 3.0),
        "acme/shop#21": (None, None, 10.0),
        "acme/shop#22": ("acme/shop:1", "explicit_sha", 0.5),
    }


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_order_and_duplication_gives_the_same_rows(data: st.DataObject) -> None:
    """The fold depends on the set of events only: shuffled and duplicated, same rows."""
    events = rich_scenario()
    expected = fold(events)
    extra = data.draw(st.lists(st.sampled_from(events), max_size=len(events)))
    shuffled = data.draw(st.permutations(events + extra))
    assert fold(shuffled) == expected


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_a_late_event_changes_the_result_as_if_it_had_come_first(data: st.DataObject) -> None:
    """Folding any prefix, then everything, equals folding everything once."""
    events = rich_scenario()
    order = data.draw(st.permutations(events))
    cut = data.draw(st.integers(0, len(order)))
    fold(order[:cut])  # an earlier refresh leaves nothing behind: the fold is stateless
    assert fold(order) == fold(events)
