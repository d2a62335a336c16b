"""GitHub deliveries → canonical events, checked against recorded webhook bodies."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import pytest

from collectors.github import (
    GitHubMapping,
    GitHubNormalized,
    GitHubPayloadError,
    normalize_github,
)
from schemas.events import (
    ChangeCommitted,
    DeploymentRecorded,
    IncidentOpened,
    IncidentResolved,
    PullRequestEvent,
    WorkItemDeleted,
    WorkItemTransitioned,
    WorkItemUpserted,
    event_json,
    parse_event,
    stable_event_id,
)
from schemas.topics import partition_key
from tests.fixtures import fixtures_dir, load_fixture

RECEIVED = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
Edit = Callable[[dict[str, Any]], None]


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text)


class Deliver(Protocol):
    def __call__(
        self,
        fixture: str,
        edit: Edit | None = None,
        *,
        mapping: GitHubMapping | None = None,
        delivery_id: str = ...,
    ) -> GitHubNormalized: ...


@pytest.fixture
def deliver() -> Deliver:
    """Normalize ``<event>/<file>`` from the recorded GitHub bodies, optionally edited."""

    def _deliver(
        fixture: str,
        edit: Edit | None = None,
        *,
        mapping: GitHubMapping | None = None,
        delivery_id: str = "72d3162e-cc78-11e3-81ab-4c9367dc0958",
    ) -> GitHubNormalized:
        body = load_fixture(f"github/{fixture}.json")
        if edit is not None:
            edit(body)
        return normalize_github(
            fixture.split("/")[0],
            delivery_id,
            body,
            received_at=RECEIVED,
            mapping=mapping or GitHubMapping(),
        )

    return _deliver


def only(result: GitHubNormalized) -> Any:
    assert result.ignored is None
    assert len(result.events) == 1, result.events
    return result.events[0]


def of_type(result: GitHubNormalized, model: type[Any]) -> Any:
    matches = [e for e in result.events if isinstance(e, model)]
    assert len(matches) == 1, result.events
    return matches[0]


def types(result: GitHubNormalized) -> list[str]:
    return [e.type for e in result.events]


def set_path(path: str, value: Any) -> Edit:
    """An edit that sets (or, for ``...``, deletes) ``a.b.c`` in a body."""

    def edit(body: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = body
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if value is ...:
            del node[last]
        else:
            node[last] = value

    return edit


def add_label(name: str, *, as_action_label: bool = False) -> Edit:
    def edit(body: dict[str, Any]) -> None:
        label = {**copy.deepcopy(body["issue"]["labels"][0]), "name": name}
        body["issue"]["labels"].append(label)
        if as_action_label:
            body["label"] = label

    return edit


def every_fixture() -> list[str]:
    root = fixtures_dir() / "github"
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.glob("*/*.json"))


# --- every delivery -------------------------------------------------------------------


@pytest.mark.parametrize("fixture", every_fixture())
def test_every_fixture_gives_events_or_a_reason(deliver: Deliver, fixture: str) -> None:
    """Each recorded delivery yields canonical events or an ignore reason, never both."""
    result = deliver(fixture)
    assert bool(result.events) != bool(result.ignored)


@pytest.mark.parametrize("fixture", every_fixture())
def test_events_are_valid_keyed_and_survive_the_wire(deliver: Deliver, fixture: str) -> None:
    """Every event is source github, keyed by the key rule, and round-trips through JSON."""
    for event in deliver(fixture).events:
        assert event.source == "github"
        assert event.received_at == RECEIVED
        assert event.key == partition_key(event)
        assert parse_event(event_json(event)) == event


@pytest.mark.parametrize("fixture", every_fixture())
def test_event_ids_depend_on_the_change_not_the_delivery(deliver: Deliver, fixture: str) -> None:
    """A redelivery or a backfill (another delivery id) gives the same event ids."""
    first = deliver(fixture, delivery_id="a")
    again = deliver(fixture, delivery_id="b")
    assert first == again


def test_event_ids_within_a_delivery_are_distinct(deliver: Deliver) -> None:
    """The upsert, transition and pull_request event of one delivery do not collide."""
    ids = [e.event_id for e in deliver("pull_request/opened").events]
    assert len(set(ids)) == len(ids) == 3


def test_body_that_is_not_an_object_is_malformed() -> None:
    """A JSON body that is not an object raises GitHubPayloadError for field "body"."""
    with pytest.raises(GitHubPayloadError) as caught:
        normalize_github("push", "d", [], received_at=RECEIVED, mapping=GitHubMapping())  # type: ignore[arg-type]
    assert caught.value.field == "body"


def test_naive_received_at_is_refused() -> None:
    """received_at must be timezone-aware (a caller bug, not a payload error)."""
    with pytest.raises(ValueError, match="received_at"):
        normalize_github("ping", "d", {}, received_at=datetime(2024, 1, 1), mapping=GitHubMapping())


def test_bad_deploy_workflow_pattern_fails_at_construction() -> None:
    """A mapping with an invalid regex is rejected when built, not per delivery."""
    with pytest.raises(re.error):
        GitHubMapping(deploy_workflow_pattern="(deploy")


# --- ping and unused events -------------------------------------------------------------


def test_ping_is_ignored(deliver: Deliver) -> None:
    """ping produces no events, with reason "ping"."""
    assert deliver("ping/ping") == GitHubNormalized(events=(), ignored="ping")


@pytest.mark.parametrize(
    "fixture",
    [
        "create/create",
        "installation/created",
        "check_suite/completed",
        "check_suite/requested",
        "workflow_job/completed_failure",
        "workflow_job/completed_success",
        "workflow_job/in_progress",
        "workflow_job/queued",
    ],
)
def test_unused_events_are_ignored_with_their_name(deliver: Deliver, fixture: str) -> None:
    """Events flowmetrics does not use are ignored, the reason naming the event."""
    result = deliver(fixture)
    assert result.events == ()
    assert result.ignored is not None and fixture.split("/")[0] in result.ignored


def test_release_is_not_a_deployment(deliver: Deliver) -> None:
    """A published release is ignored: releases are not counted as deployments."""
    assert deliver("release/published").ignored == "release recorded as no deployment"


# --- push ---------------------------------------------------------------------------------


def test_push_gives_one_commit_per_pushed_commit(deliver: Deliver) -> None:
    """A branch push yields change.committed with sha, branch, head and before shas."""
    event = only(deliver("push/branch_push"))
    assert isinstance(event, ChangeCommitted)
    repo, sha = "Devolution-Oy/tasker-issue-test", "7716bf0bd4044056d2ab6464d3ece46c3b49c6bb"
    assert (event.repo, event.sha, event.branch) == (repo, sha, "master")
    assert event.head_sha == sha
    assert event.before_sha == "8aa4a0db754acb83d8262d4bd4d028f9625fa8e3"
    assert event.event_id == stable_event_id("github", repo, "commit", sha, sha)
    assert event.key == repo
    assert (event.author, event.message) == ("devolution-roster-test", "Push event commit")


def test_push_timestamp_is_both_authored_and_committed_at(deliver: Deliver) -> None:
    """The push payload's one timestamp (offset kept) is authored_at and committed_at."""
    event = only(deliver("push/branch_push"))
    expected = ts("2020-05-29T15:11:22+03:00")
    assert event.authored_at == event.committed_at == event.occurred_at == expected


def test_push_uses_author_and_committer_dates_when_present(deliver: Deliver) -> None:
    """Commits that carry author/committer dates use them instead of the timestamp."""

    def edit(body: dict[str, Any]) -> None:
        body["commits"][0]["author"]["date"] = "2020-05-28T10:00:00Z"
        body["commits"][0]["committer"]["date"] = "2020-05-29T12:11:22Z"

    event = only(deliver("push/branch_push", edit))
    assert event.authored_at == ts("2020-05-28T10:00:00Z")
    assert event.committed_at == ts("2020-05-29T12:11:22Z")


def test_push_creating_a_branch_has_no_before_sha(deliver: Deliver) -> None:
    """A push that creates a branch (before is all zeros) records before_sha as null."""
    event = only(deliver("push/branch_created"))
    assert event.before_sha is None
    assert event.head_sha == "6113728f27ae82c7b1a177c8d03f9e96e0adf246"


@pytest.mark.parametrize("forced", [True, False])
def test_force_push_is_flagged(deliver: Deliver, forced: bool) -> None:
    """A force push's commits say so: its before_sha is the replaced head, not an ancestor."""
    event = only(deliver("push/branch_push", set_path("forced", forced)))
    assert event.forced is forced
    assert event.before_sha == "8aa4a0db754acb83d8262d4bd4d028f9625fa8e3"


def test_push_with_several_commits_gives_several_events(deliver: Deliver) -> None:
    """Each commit of a push becomes its own change.committed with its own id."""

    def edit(body: dict[str, Any]) -> None:
        second = {**copy.deepcopy(body["commits"][0]), "id": "a" * 40}
        body["commits"].insert(0, second)

    events: list[Any] = list(deliver("push/branch_push", edit).events)
    assert [e.sha for e in events] == ["a" * 40, "7716bf0bd4044056d2ab6464d3ece46c3b49c6bb"]
    assert len({e.event_id for e in events}) == 2


def test_same_commit_in_another_push_is_another_event(deliver: Deliver) -> None:
    """A commit seen again in a later push (another head) gets a different event id."""
    first = only(deliver("push/branch_push"))
    later = only(deliver("push/branch_push", set_path("after", "b" * 40)))
    assert first.sha == later.sha
    assert first.event_id != later.event_id


def test_push_deleting_a_ref_is_ignored(deliver: Deliver) -> None:
    """A push that deletes a branch or tag produces nothing."""
    result = deliver("push/tag_deleted")
    assert result.events == () and result.ignored == "push deletes refs/tags/simple-tag"


def test_push_with_zero_after_is_a_deletion(deliver: Deliver) -> None:
    """after == 40 zeros means deletion even if the deleted flag is absent."""

    def edit(body: dict[str, Any]) -> None:
        body["after"], body["deleted"] = "0" * 40, False

    assert deliver("push/branch_push", edit).ignored == "push deletes refs/heads/master"


def test_tag_push_is_ignored(deliver: Deliver) -> None:
    """A push of a tag (not a deletion) produces nothing."""

    def edit(body: dict[str, Any]) -> None:
        body["ref"] = "refs/tags/v1.0"

    result = deliver("push/branch_push", edit)
    assert result.events == () and result.ignored == "tag push refs/tags/v1.0"


def test_branch_push_without_commits_is_ignored(deliver: Deliver) -> None:
    """A branch push carrying no commits (e.g. a new branch at an old sha) is ignored."""
    result = deliver("push/branch_push", set_path("commits", []))
    assert result.events == () and result.ignored == "push to master carries no commits"


# --- pull requests ---------------------------------------------------------------------

PR_ITEM = "github:Codertocat/Hello-World#2"


def test_opened_pr_is_a_work_item_entering_development(deliver: Deliver) -> None:
    """opened → work_item.upserted, transition to Development ("open"), pull_request.opened."""
    result = deliver("pull_request/opened")
    assert types(result) == ["work_item.upserted", "work_item.transitioned", "pull_request.opened"]
    upsert, transition, opened = result.events
    assert isinstance(upsert, WorkItemUpserted)
    assert (upsert.item_id, upsert.display_key) == (PR_ITEM, "Codertocat/Hello-World#2")
    assert (upsert.item_type, upsert.project, upsert.team) == (
        "pull_request",
        "Codertocat/Hello-World",
        "Codertocat/Hello-World",
    )
    assert upsert.title == "Update the README with new information."
    assert upsert.labels == ("bug",)
    assert upsert.url == "https://github.com/Codertocat/Hello-World/pull/2"
    assert upsert.created_at == ts("2019-05-15T15:20:33Z")
    assert isinstance(transition, WorkItemTransitioned)
    assert (transition.to_stage, transition.to_status) == ("Development", "open")
    assert isinstance(opened, PullRequestEvent)
    assert (opened.number, opened.item_id, opened.base_branch) == (2, PR_ITEM, "master")
    assert opened.head_sha == "ec26c3e57ca3a959ca5aad62de7213c562f8c821"
    assert opened.author == "Codertocat"
    assert all(e.key == PR_ITEM for e in result.events)


def test_pr_event_id_is_number_action_and_time(deliver: Deliver) -> None:
    """pull_request.* ids are stable_event_id(github, repo, pr, number, action, time)."""
    opened = of_type(deliver("pull_request/opened"), PullRequestEvent)
    expected = stable_event_id(
        "github", "Codertocat/Hello-World", "pr", 2, "opened", "2019-05-15T15:20:33+00:00"
    )
    assert opened.event_id == expected


def test_draft_pr_opened_is_still_development(deliver: Deliver) -> None:
    """A PR opened as a draft enters Development like any other."""
    result = deliver("pull_request/opened", set_path("pull_request.draft", True))
    transition = of_type(result, WorkItemTransitioned)
    assert (transition.to_stage, transition.to_status) == ("Development", "open")


def test_reopened_pr_returns_to_development(deliver: Deliver) -> None:
    """reopened → pull_request.reopened and a transition back to Development."""
    result = deliver("pull_request/reopened")
    assert types(result)[1:] == ["work_item.transitioned", "pull_request.reopened"]
    assert of_type(result, WorkItemTransitioned).to_stage == "Development"


def test_reopened_and_opened_at_the_same_time_stay_distinct(deliver: Deliver) -> None:
    """A reopen is its own change even when the snapshot times equal the opening."""
    opened = {e.event_id for e in deliver("pull_request/opened").events}
    reopened = {e.event_id for e in deliver("pull_request/reopened").events}
    assert opened.isdisjoint(reopened)


@pytest.mark.parametrize(
    ("fixture", "updated_at"),
    [
        ("pull_request/ready_for_review", "2019-05-15T15:21:18Z"),
        ("pull_request/review_requested", "2019-05-15T15:20:33Z"),
    ],
)
def test_ready_or_review_requested_moves_to_testing(
    deliver: Deliver, fixture: str, updated_at: str
) -> None:
    """ready_for_review / review_requested → pull_request.ready + Testing ("in review")."""
    result = deliver(fixture)
    assert types(result) == ["work_item.upserted", "work_item.transitioned", "pull_request.ready"]
    transition = of_type(result, WorkItemTransitioned)
    assert (transition.to_stage, transition.to_status) == ("Testing", "in review")
    assert all(e.occurred_at == ts(updated_at) for e in result.events)


def test_review_requested_on_a_draft_does_not_move_it(deliver: Deliver) -> None:
    """Reviewers requested on a draft leave it in Development: only the upsert."""
    result = deliver("pull_request/review_requested", set_path("pull_request.draft", True))
    assert types(result) == ["work_item.upserted"]


def test_merged_pr_reaches_production_at_merge_time(deliver: Deliver) -> None:
    """closed+merged → pull_request.merged (sha, merged_at) + Production ("merged")."""
    result = deliver("pull_request/closed_merged")
    assert types(result) == ["work_item.upserted", "work_item.transitioned", "pull_request.merged"]
    merged_at = ts("2022-10-12T08:33:55Z")
    merged = of_type(result, PullRequestEvent)
    assert merged.merge_commit_sha == "18936fb4b760b985e35fae9aa953a349703a4c53"
    assert merged.merged_at == merged_at
    assert merged.item_id == "github:sish8075/statistics-source#17"
    transition = of_type(result, WorkItemTransitioned)
    assert (transition.to_stage, transition.to_status) == ("Production", "merged")
    assert of_type(result, WorkItemUpserted).status == "merged"
    assert all(e.occurred_at == merged_at for e in result.events)


def test_closed_unmerged_pr_is_removed(deliver: Deliver) -> None:
    """closed unmerged → pull_request.closed + Removed ("closed") at closed_at."""
    result = deliver("pull_request/closed")
    assert types(result)[1:] == ["work_item.transitioned", "pull_request.closed"]
    closed = of_type(result, PullRequestEvent)
    # the payload's merge_commit_sha is GitHub's test merge, not a real commit
    assert closed.merge_commit_sha is None and closed.merged_at is None
    assert closed.occurred_at == ts("2019-05-15T15:21:18Z")
    transition = of_type(result, WorkItemTransitioned)
    assert (transition.to_stage, transition.to_status) == ("Removed", "closed")


def test_merged_pr_without_merged_at_is_malformed(deliver: Deliver) -> None:
    """A merged PR must say when it merged; the error names the field."""
    with pytest.raises(GitHubPayloadError, match=r"pull_request\.merged_at") as caught:
        deliver("pull_request/closed_merged", set_path("pull_request.merged_at", None))
    assert caught.value.field == "pull_request.merged_at"


@pytest.mark.parametrize(
    "fixture",
    [
        "pull_request/assigned",
        "pull_request/labeled",
        "pull_request/synchronize",
        "pull_request/converted_to_draft",
    ],
)
def test_other_pr_actions_only_refresh_the_work_item(deliver: Deliver, fixture: str) -> None:
    """labeled, assigned, synchronize, converted_to_draft, ... → work_item.upserted only."""
    result = deliver(fixture)
    upsert = only(result)
    assert isinstance(upsert, WorkItemUpserted)
    assert upsert.item_id == PR_ITEM and upsert.status == "open"


def test_upsert_carries_current_labels_and_assignee(deliver: Deliver) -> None:
    """The upsert snapshot holds the PR's labels and assignee at updated_at."""
    upsert = only(deliver("pull_request/labeled"))
    assert (upsert.labels, upsert.assignee) == (("bug",), "Codertocat")
    assert upsert.occurred_at == ts("2019-05-15T15:20:35Z")


def test_two_labels_in_the_same_second_are_two_upserts(deliver: Deliver) -> None:
    """Same-second deliveries of one action differ by their label, so neither is lost."""
    bug = only(deliver("pull_request/labeled"))
    urgent = only(deliver("pull_request/labeled", set_path("label.name", "urgent")))
    assert bug.event_id != urgent.event_id


def test_pr_without_number_is_malformed(deliver: Deliver) -> None:
    """A pull_request body without pull_request.number raises, naming the field."""
    with pytest.raises(GitHubPayloadError, match=r"'pull_request\.number'"):
        deliver("pull_request/opened", set_path("pull_request.number", ...))


# --- reviews ----------------------------------------------------------------------------


def test_submitted_review_is_pull_request_reviewed(deliver: Deliver) -> None:
    """pull_request_review submitted → pull_request.reviewed at submitted_at."""
    event = only(deliver("pull_request_review/submitted"))
    assert isinstance(event, PullRequestEvent)
    assert (event.type, event.item_id, event.number) == ("pull_request.reviewed", PR_ITEM, 2)
    assert event.occurred_at == ts("2019-05-15T15:20:38Z")
    assert event.event_id == stable_event_id(
        "github", "Codertocat/Hello-World", "pr", 2, "reviewed", 237895671
    )


def test_dismissed_review_is_ignored(deliver: Deliver) -> None:
    """pull_request_review dismissed produces nothing."""
    result = deliver("pull_request_review/dismissed")
    assert result.events == () and result.ignored is not None


# --- deployments --------------------------------------------------------------------------

DEPLOYMENT_URL = "https://api.github.com/repos/Codertocat/Hello-World/deployments/145988746"


def test_created_deployment_is_recorded_pending(deliver: Deliver) -> None:
    """deployment created → deployment.recorded pending, id repo:id, started at creation."""
    event = only(deliver("deployment/created"))
    assert isinstance(event, DeploymentRecorded)
    assert event.deployment_id == "Codertocat/Hello-World:145988746"
    assert (event.status, event.environment) == ("pending", "production")
    assert event.sha == "f95f852bd8fca8fcc58a9a2d6c842781e32a215e"
    assert event.started_at == event.occurred_at == ts("2019-05-15T15:20:53Z")
    assert event.finished_at is None and event.rollback_of is None
    assert (event.service, event.url) == ("Codertocat/Hello-World", DEPLOYMENT_URL)
    assert event.key == "Codertocat/Hello-World"


def test_deployment_service_comes_from_the_mapping(deliver: Deliver) -> None:
    """service_for_repo names the service of a repository's deployments."""
    mapping = GitHubMapping(service_for_repo={"Codertocat/Hello-World": "hello-api"})
    assert only(deliver("deployment/created", mapping=mapping)).service == "hello-api"


@pytest.mark.parametrize(
    ("target", "expected"),
    [(145988700, "Codertocat/Hello-World:145988700"), ("other/repo:7", "other/repo:7")],
)
def test_deployment_payload_names_what_it_rolls_back(
    deliver: Deliver, target: object, expected: str
) -> None:
    """deployment.payload.rollback_of (GitHub id or deployment_id) sets rollback_of."""
    event = only(deliver("deployment/created", set_path("deployment.payload.rollback_of", target)))
    assert event.rollback_of == expected


def test_successful_deployment_status_finishes_the_deployment(deliver: Deliver) -> None:
    """deployment_status success → same deployment_id, success, finished at the status time."""
    event = only(deliver("deployment_status/created_success"))
    assert event.deployment_id == "Codertocat/Hello-World:145988746"
    assert event.status == "success"
    assert event.started_at == ts("2019-05-15T15:20:53Z")
    assert event.finished_at == event.occurred_at == ts("2019-05-15T15:20:55Z")
    assert event.url == DEPLOYMENT_URL
    assert event.event_id == stable_event_id(
        "github", "Codertocat/Hello-World", "deployment_status", 209916254
    )


def test_in_progress_deployment_status_is_not_finished(deliver: Deliver) -> None:
    """deployment_status in_progress → in_progress, no finished_at, its own environment."""
    event = only(deliver("deployment_status/created_in_progress"))
    assert (event.status, event.environment, event.finished_at) == (
        "in_progress",
        "github-pages",
        None,
    )


@pytest.mark.parametrize(
    ("state", "status", "finished"),
    [
        ("success", "success", True),
        ("failure", "failure", True),
        ("error", "error", True),
        ("inactive", "inactive", False),
        ("in_progress", "in_progress", False),
        ("queued", "queued", False),
        ("pending", "pending", False),
        ("waiting", "pending", False),
    ],
)
def test_deployment_states_map_onto_the_contract(
    deliver: Deliver, state: str, status: str, finished: bool
) -> None:
    """Every GitHub deployment state maps to a contract status; terminal ones finish."""
    edit = set_path("deployment_status.state", state)
    event = only(deliver("deployment_status/created_success", edit))
    assert event.status == status
    assert (event.finished_at is not None) is finished


def test_unknown_deployment_state_is_malformed(deliver: Deliver) -> None:
    """An unknown deployment_status.state raises, naming the field."""
    with pytest.raises(GitHubPayloadError, match=r"deployment_status\.state"):
        deliver("deployment_status/created_success", set_path("deployment_status.state", "odd"))


@pytest.mark.parametrize(
    ("fixture", "path"),
    [
        ("deployment/created", "deployment.sha"),
        ("deployment/created", "deployment.environment"),
        ("deployment_status/created_success", "deployment_status.id"),
        ("deployment_status/created_success", "deployment.created_at"),
    ],
)
def test_deployment_missing_fields_are_named(deliver: Deliver, fixture: str, path: str) -> None:
    """A deployment body without a required field raises, naming that field."""
    with pytest.raises(GitHubPayloadError, match=path.replace(".", r"\.")):
        deliver(fixture, set_path(path, ...))


# --- workflow runs ----------------------------------------------------------------------

TEST_WORKFLOW = GitHubMapping(deploy_workflow_pattern=r"^test$")


def test_workflow_runs_are_no_deployments_by_default(deliver: Deliver) -> None:
    """Without a configured deploy workflow pattern no run is a deployment (no double count
    with deployment_status, no GitHub Pages builds)."""
    edit = set_path("workflow_run.name", "pages build and deployment")
    result = deliver("workflow_run/completed", edit)
    assert result.events == ()
    assert result.ignored == (
        "workflow runs are not deployments (no deploy workflow pattern is set)"
    )


def test_workflow_not_matching_the_pattern_is_ignored(deliver: Deliver) -> None:
    """A completed run of a workflow whose name does not match is no deployment."""
    mapping = GitHubMapping(deploy_workflow_pattern=r"(?i)deploy")
    result = deliver("workflow_run/completed", mapping=mapping)
    assert result.events == ()
    assert result.ignored == "workflow 'test' does not match the deploy workflow pattern"


def test_matching_completed_run_is_a_deployment(deliver: Deliver) -> None:
    """A completed run of a matching workflow → deployment.recorded in the mapped environment."""
    event = only(deliver("workflow_run/completed", mapping=TEST_WORKFLOW))
    assert isinstance(event, DeploymentRecorded)
    assert event.deployment_id == "octo-org/octo-repo:run:289782451"
    assert (event.environment, event.status) == ("production", "success")
    assert event.sha == "3484a3fb816e0859fd6e1cea078d76385ff50625"
    assert event.started_at == ts("2020-10-05T16:33:49Z")
    assert event.finished_at == event.occurred_at == ts("2020-10-05T16:33:49Z")
    assert event.url == "https://github.com/octo-org/octo-repo/actions/runs/289782451"


def test_run_name_is_matched_by_the_configured_pattern(deliver: Deliver) -> None:
    """The run's own name is what the configured pattern matches."""
    mapping = GitHubMapping(deploy_workflow_pattern=r"(?i)^deploy")
    edit = set_path("workflow_run.name", "Deploy to production")
    event = only(deliver("workflow_run/completed_with_pull_requests", edit, mapping=mapping))
    assert event.status == "success"


def test_workflow_environment_comes_from_the_mapping(deliver: Deliver) -> None:
    """workflow_environment is the environment recorded for deploy workflow runs."""
    mapping = GitHubMapping(deploy_workflow_pattern="test", workflow_environment="prod-eu")
    assert only(deliver("workflow_run/completed", mapping=mapping)).environment == "prod-eu"


@pytest.mark.parametrize("conclusion", ["failure", "timed_out", "startup_failure"])
def test_failed_deploy_run_is_a_failed_deployment(deliver: Deliver, conclusion: str) -> None:
    """A deploy run that failed or timed out is a failed deployment."""
    edit = set_path("workflow_run.conclusion", conclusion)
    assert only(deliver("workflow_run/completed", edit, mapping=TEST_WORKFLOW)).status == "failure"


@pytest.mark.parametrize("conclusion", ["cancelled", "skipped", "neutral", "action_required"])
def test_deploy_run_that_never_deployed_is_ignored(deliver: Deliver, conclusion: str) -> None:
    """Cancelled or skipped deploy runs deployed nothing and are ignored."""
    edit = set_path("workflow_run.conclusion", conclusion)
    result = deliver("workflow_run/completed", edit, mapping=TEST_WORKFLOW)
    assert result.events == () and result.ignored is not None and conclusion in result.ignored


def test_rerun_is_another_deployment(deliver: Deliver) -> None:
    """A re-run attempt gets its own deployment_id, so a failed first attempt stays counted."""
    first = only(deliver("workflow_run/completed", mapping=TEST_WORKFLOW))
    edit = set_path("workflow_run.run_attempt", 2)
    second = only(deliver("workflow_run/completed", edit, mapping=TEST_WORKFLOW))
    assert second.deployment_id == "octo-org/octo-repo:run:289782451:attempt:2"
    assert first.event_id != second.event_id


def test_requested_run_is_ignored(deliver: Deliver) -> None:
    """Only completed workflow runs are deployments."""
    result = deliver("workflow_run/requested", mapping=TEST_WORKFLOW)
    assert result.events == () and result.ignored is not None


# --- issues as work items -----------------------------------------------------------------

ISSUE_ITEM = "github:Codertocat/Hello-World#issue1"


def test_opened_issue_enters_the_backlog(deliver: Deliver) -> None:
    """issues opened → upsert (item_type issue) + transition to Backlog ("open")."""
    result = deliver("issues/opened")
    assert types(result) == ["work_item.upserted", "work_item.transitioned"]
    upsert, transition = of_type(result, WorkItemUpserted), of_type(result, WorkItemTransitioned)
    assert (upsert.item_id, upsert.display_key) == (ISSUE_ITEM, "Codertocat/Hello-World#1")
    assert (upsert.item_type, upsert.status, upsert.labels) == ("issue", "open", ("bug",))
    assert (transition.to_stage, transition.to_status) == ("Backlog", "open")
    assert transition.occurred_at == ts("2019-05-15T15:20:18Z")


def test_reopened_issue_returns_to_the_backlog(deliver: Deliver) -> None:
    """issues reopened → transition to Backlog at updated_at."""
    transition = of_type(deliver("issues/reopened"), WorkItemTransitioned)
    assert transition.to_stage == "Backlog"
    assert transition.occurred_at == ts("2021-10-11T16:40:56Z")


def test_closed_issue_reaches_production(deliver: Deliver) -> None:
    """issues closed (completed) → transition to Production ("closed") at closed_at."""
    result = deliver("issues/closed")
    transition = of_type(result, WorkItemTransitioned)
    assert transition.item_id == "github:codinasion/codinasion-bot#issue2"
    assert (transition.to_stage, transition.to_status) == ("Production", "closed")
    assert transition.occurred_at == ts("2022-07-08T13:54:56Z")


def test_issue_closed_as_not_planned_is_removed(deliver: Deliver) -> None:
    """An issue closed as not planned leaves the flow (Removed) rather than completing."""
    result = deliver("issues/closed", set_path("issue.state_reason", "not_planned"))
    assert of_type(result, WorkItemTransitioned).to_stage == "Removed"


@pytest.mark.parametrize("fixture", ["issues/assigned", "issues/labeled"])
def test_other_issue_actions_only_refresh_the_work_item(deliver: Deliver, fixture: str) -> None:
    """labeled/assigned issues → work_item.upserted only."""
    upsert = only(deliver(fixture))
    assert isinstance(upsert, WorkItemUpserted)
    assert (upsert.item_id, upsert.assignee) == (ISSUE_ITEM, "Codertocat")


def test_deleted_issue_deletes_the_work_item(deliver: Deliver) -> None:
    """issues deleted → work_item.deleted for that item."""
    event = only(deliver("issues/opened", set_path("action", "deleted")))
    assert isinstance(event, WorkItemDeleted) and event.item_id == ISSUE_ITEM


# --- issues as incidents ------------------------------------------------------------------


def test_opened_incident_issue_is_an_incident(deliver: Deliver) -> None:
    """An issue labelled incident, opened → incident.opened with service and opened_at."""
    event = only(deliver("issues/opened", add_label("incident")))
    assert isinstance(event, IncidentOpened)
    assert event.incident_id == "Codertocat/Hello-World#1"
    assert (event.repo, event.service) == ("Codertocat/Hello-World", "Codertocat/Hello-World")
    assert event.title == "Spelling error in the README file"
    assert event.body.startswith("It looks like")
    assert event.opened_at == ts("2019-05-15T15:20:18Z")
    assert event.root_cause_sha is None and event.deployment_url is None
    assert event.key == "incident:Codertocat/Hello-World"


def test_incident_label_matches_case_insensitively(deliver: Deliver) -> None:
    """The incident label is matched regardless of case, and is configurable."""
    mapping = GitHubMapping(incident_label="sev1", service_for_repo={"Codertocat/Hello-World": "s"})
    event = only(deliver("issues/opened", add_label("SEV1"), mapping=mapping))
    assert isinstance(event, IncidentOpened) and event.service == "s"


def test_labelling_an_issue_incident_opens_an_incident(deliver: Deliver) -> None:
    """labeled with the incident label → incident.opened, opened_at still created_at."""
    event = only(deliver("issues/labeled", add_label("incident", as_action_label=True)))
    assert isinstance(event, IncidentOpened)
    assert event.opened_at == ts("2019-05-15T15:20:18Z")


def test_other_label_on_an_incident_is_ignored(deliver: Deliver) -> None:
    """An incident issue labeled with another label produces nothing."""
    result = deliver("issues/labeled", add_label("incident"))
    assert result.events == () and result.ignored is not None and "'bug'" in result.ignored


def test_reopened_incident_is_opened_again(deliver: Deliver) -> None:
    """reopened incident → incident.opened (same incident id, a new event id)."""
    reopened = only(deliver("issues/reopened", add_label("incident")))
    opened = only(deliver("issues/opened", add_label("incident")))
    assert isinstance(reopened, IncidentOpened)
    assert reopened.incident_id == opened.incident_id
    assert reopened.event_id != opened.event_id


def test_closed_incident_is_resolved(deliver: Deliver) -> None:
    """A closed incident issue → incident.resolved at closed_at."""
    event = only(deliver("issues/closed", add_label("incident")))
    assert isinstance(event, IncidentResolved)
    assert event.incident_id == "codinasion/codinasion-bot#2"
    assert event.resolved_at == event.occurred_at == ts("2022-07-08T13:54:56Z")
    assert event.key == "incident:codinasion/codinasion-bot"


def test_untracked_incident_action_is_ignored(deliver: Deliver) -> None:
    """Incident issue actions other than opened/labeled/reopened/closed produce nothing."""
    result = deliver("issues/assigned", add_label("incident"))
    assert result.events == () and result.ignored is not None


FULL_SHA = "7716bf0bd4044056d2ab6464d3ece46c3b49c6bb"


@pytest.mark.parametrize(
    ("body", "root_cause", "deployment_url"),
    [
        (f"Root cause: {FULL_SHA.upper()}\n", FULL_SHA, None),
        ("Checkout down.\r\nroot cause: `f95f852`", "f95f852", None),
        ("root-cause: 6113728f27ae is the culprit", "6113728f27ae", None),
        ("root cause: unknown yet", None, None),
        ("root cause: abc12", None, None),
        (f"Broke after {DEPLOYMENT_URL}/statuses/209916254.", None, DEPLOYMENT_URL),
        (
            "see (https://github.example.com/api/v3/repos/o/r/deployments/42)",
            None,
            "https://github.example.com/api/v3/repos/o/r/deployments/42",
        ),
        ("no links here", None, None),
    ],
)
def test_incident_body_links_are_parsed(
    deliver: Deliver, body: str, root_cause: str | None, deployment_url: str | None
) -> None:
    """A 'root cause: <sha>' line and a deployment URL in the body are explicit links."""

    def edit(payload: dict[str, Any]) -> None:
        add_label("incident")(payload)
        payload["issue"]["body"] = body

    event = only(deliver("issues/opened", edit))
    assert (event.root_cause_sha, event.deployment_url) == (root_cause, deployment_url)


# --- malformed bodies ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "path", "value", "field"),
    [
        ("push/branch_push", "repository.full_name", ..., "repository.full_name"),
        ("push/branch_push", "repository", ..., "repository"),
        ("push/branch_push", "commits.0.id", ..., "commits[0].id"),
        ("push/branch_push", "commits.0.timestamp", ..., "commits[0].timestamp"),
        ("push/branch_push", "commits.0.timestamp", "yesterday", "commits[0].timestamp"),
        ("push/branch_push", "commits.0.timestamp", "2020-05-29T15:11:22", "commits[0].timestamp"),
        ("push/branch_push", "commits", "none", "commits"),
        ("pull_request/opened", "action", ..., "action"),
        ("pull_request/opened", "pull_request.number", "2", "pull_request.number"),
        ("pull_request/opened", "pull_request.created_at", ..., "pull_request.created_at"),
        ("pull_request/closed", "pull_request.closed_at", None, "pull_request.closed_at"),
        ("pull_request_review/submitted", "review.submitted_at", ..., "review.submitted_at"),
        ("issues/opened", "issue", ..., "issue"),
        ("issues/closed", "issue.closed_at", None, "issue.closed_at"),
        ("workflow_run/completed", "workflow_run.head_sha", ..., "workflow_run.head_sha"),
    ],
)
def test_missing_or_malformed_fields_are_named(
    deliver: Deliver, fixture: str, path: str, value: Any, field: str
) -> None:
    """A body lacking, or mistyping, a field we need raises GitHubPayloadError naming it."""
    with pytest.raises(GitHubPayloadError) as caught:
        deliver(fixture, set_path(path, value), mapping=TEST_WORKFLOW)
    assert caught.value.field == field
    assert repr(field) in str(caught.value)
