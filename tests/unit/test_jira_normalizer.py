"""Jira webhook bodies (recorded, in ../shared/fixtures/jira) → canonical events."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from collectors.jira import (
    JiraNormalized,
    JiraPayloadError,
    jira_fallback_delivery_id,
    normalize_jira,
    status_event_id,
)
from processor.stages import StageConfig, load_stage_config, parse_stage_config
from schemas.events import (
    WorkItemDeleted,
    WorkItemTransitioned,
    WorkItemUpserted,
    event_json,
    parse_event,
    stable_event_id,
)
from tests.fixtures import fixtures_dir, load_fixture

RECEIVED = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)

TES41 = "jira/issue_updated/cloud_TES-41_status_{}.json"
TES4 = "jira/issue_updated/server_TES-4_status_{}.json"

Normalize = Callable[[dict[str, Any]], JiraNormalized]


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.fixture(scope="module")
def stages() -> StageConfig:
    return load_stage_config()


@pytest.fixture
def normalize(stages: StageConfig) -> Normalize:
    def run(body: dict[str, Any]) -> JiraNormalized:
        return normalize_jira(body, received_at=RECEIVED, stages=stages)

    return run


def transitions(result: JiraNormalized) -> list[WorkItemTransitioned]:
    return [e for e in result.events if isinstance(e, WorkItemTransitioned)]


def upsert(result: JiraNormalized) -> WorkItemUpserted:
    (event,) = [e for e in result.events if isinstance(e, WorkItemUpserted)]
    return event


def status_update(body: dict[str, Any], *items: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``body`` whose changelog holds ``items``."""
    changed = copy.deepcopy(body)
    changed["changelog"]["items"] = list(items)
    return changed


# -- the TES-41 (Jira Cloud) and TES-4 (Jira Server) sequences ---------------------


def test_tes41_created(normalize: Normalize) -> None:
    """issue_created gives an upsert at the delivery time and the initial status at creation."""
    result = normalize(load_fixture("jira/issue_created/cloud_TES-41_created.json"))
    assert result.ignored is None
    item = upsert(result)
    assert item.occurred_at == utc("2019-02-16 03:01:53.023")
    (initial,) = transitions(result)
    assert (initial.from_status, initial.to_status, initial.to_status_category) == (
        None,
        "To Do",
        "new",
    )
    # fields.created (19:01:52.971-0800), not the delivery time
    assert initial.occurred_at == utc("2019-02-16 03:01:52.971")
    assert initial.event_id == stable_event_id("jira", "10040", "created")


def test_tes41_status_sequence_matches_readme(normalize: Normalize) -> None:
    """TES-41: To Do → In Progress → Done → To Do at the README's times, with categories."""
    got = [
        (t.from_status, t.to_status, t.to_status_category, t.occurred_at)
        for name in ("todo_to_inprogress", "inprogress_to_done", "done_to_todo")
        for t in transitions(normalize(load_fixture(TES41.format(name))))
    ]
    assert got == [
        ("To Do", "In Progress", "indeterminate", utc("2019-02-16 03:14:22.039")),
        ("In Progress", "Done", "done", utc("2019-02-16 03:15:40.507")),
        ("Done", "To Do", "new", utc("2019-02-16 03:17:06.531")),
    ]


def test_tes4_server_sequence_keeps_the_gap(normalize: Normalize) -> None:
    """TES-4 (Server): each delivery's own from/to, so the missing In Progress → Resolved stays."""
    got = [
        (t.from_status, t.to_status, t.to_status_category, t.occurred_at)
        for name in (
            "inprogress_to_resolved",
            "resolved_to_reopened",
            "reopened_to_inprogress",
            "resolved_to_closed",
        )
        for t in transitions(normalize(load_fixture(TES4.format(name))))
    ]
    assert got == [
        ("In Progress", "Resolved", "done", utc("2019-08-12 23:23:02.025")),
        ("Resolved", "Reopened", "new", utc("2019-08-14 03:01:43.657")),
        ("Reopened", "In Progress", "indeterminate", utc("2019-08-14 03:02:33.680")),
        ("Resolved", "Closed", "done", utc("2019-08-14 03:07:58.358")),
    ]


def test_server_status_item_without_field_id(normalize: Normalize) -> None:
    """Jira Server items carry no fieldId; field "status" alone identifies a status change."""
    body = load_fixture(TES4.format("inprogress_to_resolved"))
    assert all("fieldId" not in item for item in body["changelog"]["items"])
    assert len(transitions(normalize(body))) == 1


# -- event ids ---------------------------------------------------------------------


def test_status_event_id_is_history_id_and_status_ordinal(normalize: Normalize) -> None:
    """A transition's id is (issue id, changelog id, ordinal among status items)."""
    (cloud,) = transitions(normalize(load_fixture(TES41.format("inprogress_to_done"))))
    (server,) = transitions(normalize(load_fixture(TES4.format("inprogress_to_resolved"))))
    # resolution comes before status in the Cloud body and after it in the Server body
    assert cloud.event_id == stable_event_id("jira", "10040", "status", "10228", 0)
    assert server.event_id == stable_event_id("jira", "10300", "status", "10414", 0)
    assert cloud.event_id == status_event_id("10040", "10228", 0)


def test_upsert_event_id_is_issue_timestamp_and_changelog(normalize: Normalize) -> None:
    """The upsert's id is (issue id, "upsert", body timestamp, changelog id)."""
    body = load_fixture("jira/issue_updated/cloud_TES-41_assigned.json")
    assert upsert(normalize(body)).event_id == stable_event_id(
        "jira", "10040", "upsert", 1550287081752, body["changelog"]["id"]
    )


def test_same_millisecond_deliveries_keep_distinct_upsert_ids(normalize: Normalize) -> None:
    """Two deliveries stamped with one millisecond (issuetype and summary) are not merged."""
    a = load_fixture("jira/issue_updated/cloud_TES-41_issuetype_changed.json")
    b = load_fixture("jira/issue_updated/cloud_TES-41_summary_changed.json")
    assert a["timestamp"] == b["timestamp"]
    assert upsert(normalize(a)).event_id != upsert(normalize(b)).event_id


def test_retry_gives_identical_events(normalize: Normalize) -> None:
    """Normalizing the same delivery twice gives the same events (ids included)."""
    body = load_fixture(TES41.format("todo_to_inprogress"))
    assert normalize(body) == normalize(copy.deepcopy(body))


def test_several_status_items_get_distinct_ordinals(normalize: Normalize) -> None:
    """Two status items in one changelog are two transitions with ordinals 0 and 1."""
    body = load_fixture(TES41.format("todo_to_inprogress"))
    (item,) = body["changelog"]["items"]
    second = {**item, "fromString": "In Progress", "toString": "In Review", "to": "99"}
    events = transitions(normalize(status_update(body, item, {"field": "priority"}, second)))
    assert [e.event_id for e in events] == [
        status_event_id("10040", "10227", 0),
        status_event_id("10040", "10227", 1),
    ]


# -- the status category rule ------------------------------------------------------


def test_category_only_when_to_status_is_the_current_status(normalize: Normalize) -> None:
    """to_status_category is set only for the item whose toString is fields.status.name."""
    body = load_fixture(TES41.format("todo_to_inprogress"))
    (item,) = body["changelog"]["items"]
    second = {**item, "fromString": "In Progress", "toString": "In Review", "to": "99"}
    events = transitions(normalize(status_update(body, item, second)))
    assert [(e.to_status, e.to_status_category) for e in events] == [
        ("In Progress", "indeterminate"),
        ("In Review", None),
    ]


def test_no_category_when_the_issue_moved_on(normalize: Normalize) -> None:
    """A body whose current status differs from toString gives no category."""
    body = load_fixture(TES41.format("inprogress_to_done"))
    body["issue"]["fields"]["status"]["name"] = "Closed"
    (event,) = transitions(normalize(body))
    assert (event.to_status, event.to_status_category) == ("Done", None)


# -- bodies without a status change ------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "cloud_TES-41_assigned.json",
        "cloud_TES-41_description_changed.json",
        "cloud_TES-41_sprint_changed.json",
        "cloud_TES-10_component_added.json",
        "server_TEST-4_issue_commented.json",
    ],
)
def test_update_without_status_change_is_an_upsert_only(normalize: Normalize, name: str) -> None:
    """An issue_updated body without a status item gives one upsert and no transition."""
    result = normalize(load_fixture(f"jira/issue_updated/{name}"))
    assert [e.type for e in result.events] == ["work_item.upserted"]


def test_legacy_body_without_event_type_name(normalize: Normalize) -> None:
    """Old Jira Server bodies without issue_event_type_name normalize like the Cloud ones."""
    legacy = normalize(load_fixture("jira/issue_updated/legacy_no_issue_event_type_assigned.json"))
    cloud = normalize(load_fixture("jira/issue_updated/cloud_TES-41_assigned.json"))
    assert legacy == cloud
    assert upsert(legacy).assignee == "Test User"


def test_empty_changelog_falls_back_to_timestamp_for_created(normalize: Normalize) -> None:
    """Empty changelog: one upsert; with no fields.created, created_at is the event time."""
    body = load_fixture("jira/issue_updated/cloud_TEST-123_assigned_empty_changelog.json")
    result = normalize(body)
    item = upsert(result)
    assert len(result.events) == 1
    assert item.created_at == item.occurred_at == utc("2024-08-20 18:47:42.935")


def test_unassigned_issue_has_no_assignee(normalize: Normalize) -> None:
    """A null fields.assignee becomes assignee None."""
    body = load_fixture("jira/issue_updated/cloud_TES-41_unassigned.json")
    assert upsert(normalize(body)).assignee is None


# -- created and deleted -----------------------------------------------------------


def test_created_status_item_is_not_a_second_transition(normalize: Normalize) -> None:
    """The "Status: ∅ → To Do" item of a creation is the initial transition, not another."""
    body = load_fixture("jira/issue_created/cloud_KT-22_created_many_fields.json")
    assert any(i["field"] == "Status" for i in body["changelog"]["items"])
    (initial,) = transitions(normalize(body))
    assert (initial.from_status, initial.to_status) == (None, "To Do")


def test_created_upsert_fields(normalize: Normalize) -> None:
    """The upsert carries the issue's attributes, keyed and identified by the numeric id."""
    item = upsert(
        normalize(load_fixture("jira/issue_created/cloud_KT-22_created_many_fields.json"))
    )
    assert item.item_id == item.key == "jira:10509"
    assert (item.display_key, item.project, item.team) == ("KT-22", "KT", "KT")
    assert (item.item_type, item.title) == ("Task", "Lots of fields selected")
    assert (item.status, item.status_category) == ("To Do", "new")
    assert (item.assignee, item.labels) == ("Sample User", ("Label1", "Label2"))
    assert item.created_at == utc("2019-08-27 19:43:24.193")
    assert item.url == "https://mmtest.atlassian.net/browse/KT-22"
    assert (item.source, item.received_at) == ("jira", RECEIVED)


def test_server_browse_url(normalize: Normalize) -> None:
    """The browse URL keeps a Jira Server's host and port."""
    item = upsert(normalize(load_fixture(TES4.format("resolved_to_closed"))))
    assert item.url == "http://some-instance-test.centralus.cloudapp.azure.com:8080/browse/TES-4"


def test_team_comes_from_the_stage_config() -> None:
    """team = the [teams] mapping of the project key."""
    stages = parse_stage_config(
        '[[stages]]\nname = "A"\nkind = "active"\n[[stages]]\nname = "B"\nkind = "done"\n'
        '[teams]\nTES = "Core"\n'
    )
    body = load_fixture(TES41.format("todo_to_inprogress"))
    result = normalize_jira(body, received_at=RECEIVED, stages=stages)
    assert upsert(result).team == "Core"


def test_deleted(normalize: Normalize) -> None:
    """issue_deleted gives one work_item.deleted at the delivery time."""
    result = normalize(load_fixture("jira/issue_deleted/cloud_IDT-19_deleted.json"))
    (event,) = result.events
    assert isinstance(event, WorkItemDeleted)
    assert (event.item_id, event.key) == ("jira:10303", "jira:10303")
    assert event.event_id == stable_event_id("jira", "10303", "deleted")
    assert event.occurred_at == utc("2019-07-03 18:05:36.176")


# -- ignored events ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "event"),
    [
        ("comment_created/cloud_TES-41_comment_created.json", "comment_created"),
        ("comment_created/server_comment_created.json", "comment_created"),
        ("comment_updated/cloud_TES-41_comment_updated.json", "comment_updated"),
        ("comment_deleted/cloud_KT-7_comment_deleted.json", "comment_deleted"),
    ],
)
def test_comment_events_are_ignored(normalize: Normalize, name: str, event: str) -> None:
    """Comment events publish nothing and say why."""
    result = normalize(load_fixture(f"jira/{name}"))
    assert result == JiraNormalized(events=(), ignored=f"event {event} not handled")


def test_sprint_events_are_ignored(normalize: Normalize) -> None:
    """Sprint events (no recorded body exists) publish nothing, even without an issue."""
    result = normalize({"webhookEvent": "sprint_started", "timestamp": 1, "sprint": {"id": 1}})
    assert result.events == ()
    assert result.ignored == "event sprint_started not handled"


# -- every recorded body -----------------------------------------------------------


def test_every_fixture_gives_valid_wire_events(normalize: Normalize) -> None:
    """Every recorded body normalizes to events that survive the JSON wire format."""
    paths = sorted((fixtures_dir() / "jira").glob("*/*.json"))
    assert len(paths) == 27
    for path in paths:
        result = normalize(load_fixture(str(path.relative_to(fixtures_dir()))))
        assert bool(result.events) != bool(result.ignored), path.name
        for event in result.events:
            assert parse_event(event_json(event)) == event, path.name


# -- malformed bodies --------------------------------------------------------------


def _broken(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    body = load_fixture(TES41.format("todo_to_inprogress"))
    target = body
    for part in path[:-1]:
        target = target[part]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return body


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("webhookEvent",), KeyError, "webhookEvent is missing"),
        (("webhookEvent",), 7, "webhookEvent must be a non-empty string"),
        (("issue",), KeyError, "issue is missing"),
        (("issue",), [], "issue must be an object"),
        (("issue", "id"), KeyError, "issue.id is missing"),
        (("issue", "id"), {"n": 1}, "issue.id must be a string or an integer"),
        (("issue", "key"), KeyError, "issue.key is missing"),
        (("issue", "key"), 41, "issue.key must be a string"),
        (("timestamp",), KeyError, "timestamp is missing"),
        (("timestamp",), "1550286862039", "timestamp must be an integer"),
        (("timestamp",), True, "timestamp must be an integer"),
        (("timestamp",), 10**20, "timestamp 100000000000000000000 is out of range"),
        (("issue", "fields"), KeyError, "issue.fields is missing"),
        (("issue", "fields", "status"), "In Progress", "issue.fields.status must be an object"),
        (("issue", "fields", "labels"), "a,b", "issue.fields.labels must be a list"),
        (("issue", "fields", "created"), "yesterday", "issue.fields.created is not a date-time"),
        (("issue", "fields", "created"), "2019-02-15T19:01:52", "issue.fields.created"),
        (("changelog", "items"), {}, "changelog.items must be a list"),
        (("changelog", "items"), ["status"], "changelog.items[0] must be an object"),
        (("changelog", "id"), KeyError, "changelog.id is missing"),
        (("changelog", "items", 0, "toString"), None, "changelog.items[].toString"),
    ],
)
def test_malformed_body_names_the_field(
    normalize: Normalize, path: tuple[Any, ...], value: Any, message: str
) -> None:
    """A malformed issue body raises JiraPayloadError saying which field is wrong."""
    with pytest.raises(JiraPayloadError) as info:
        normalize(_broken(path, value))
    assert message in str(info.value)


def test_body_must_be_an_object(normalize: Normalize) -> None:
    """A JSON array (or anything not an object) is rejected."""
    with pytest.raises(JiraPayloadError, match="body must be a JSON object"):
        normalize([])  # type: ignore[arg-type]


def test_deleted_needs_no_fields(normalize: Normalize) -> None:
    """issue_deleted only needs issue.id, issue.key and timestamp."""
    body = load_fixture("jira/issue_deleted/cloud_IDT-19_deleted.json")
    del body["issue"]["fields"]
    assert len(normalize(body).events) == 1


def test_naive_received_at_is_a_caller_error(stages: StageConfig) -> None:
    """received_at without a time zone is refused (it is not the payload's fault)."""
    body = load_fixture(TES41.format("todo_to_inprogress"))
    with pytest.raises(ValueError, match="timezone-aware") as info:
        normalize_jira(body, received_at=datetime(2024, 1, 1), stages=stages)
    assert not isinstance(info.value, JiraPayloadError)


# -- fallback delivery id ----------------------------------------------------------


def test_fallback_delivery_id_is_stable_for_a_retry() -> None:
    """The same body (a retry) hashes to the same delivery id."""
    body = load_fixture(TES41.format("done_to_todo"))
    assert jira_fallback_delivery_id(body) == jira_fallback_delivery_id(copy.deepcopy(body))


def test_fallback_delivery_id_differs_between_deliveries() -> None:
    """Distinct recorded deliveries get distinct ids."""
    names = [
        "jira/issue_created/cloud_TES-41_created.json",
        TES41.format("todo_to_inprogress"),
        TES41.format("inprogress_to_done"),
        TES41.format("done_to_todo"),
        "jira/issue_updated/cloud_TES-41_assigned.json",
        "jira/comment_created/cloud_TES-41_comment_created.json",
        "jira/comment_updated/cloud_TES-41_comment_updated.json",
        "jira/issue_deleted/cloud_IDT-19_deleted.json",
    ]
    ids = {jira_fallback_delivery_id(load_fixture(name)) for name in names}
    assert len(ids) == len(names)


def test_fallback_delivery_id_uses_changelog_id_over_timestamp() -> None:
    """With a changelog, its id (not the timestamp) identifies the delivery."""
    body = load_fixture(TES41.format("done_to_todo"))
    later = {**body, "timestamp": body["timestamp"] + 1}
    assert jira_fallback_delivery_id(later) == jira_fallback_delivery_id(body)
    no_changelog = load_fixture("jira/issue_deleted/cloud_IDT-19_deleted.json")
    later = {**no_changelog, "timestamp": no_changelog["timestamp"] + 1}
    assert jira_fallback_delivery_id(later) != jira_fallback_delivery_id(no_changelog)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"webhookEvent": "comment_created", "timestamp": 1, "comment": {"id": "1"}},
        {"issue": "not an object", "changelog": [1]},
    ],
)
def test_fallback_delivery_id_never_raises(body: dict[str, Any]) -> None:
    """Any body, even one that will be rejected, gets a delivery id."""
    assert len(jira_fallback_delivery_id(body)) == 32


def test_fixtures_dir_honours_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """FLOW_FIXTURES_DIR, when set, is where recorded payloads are read from."""
    monkeypatch.setenv("FLOW_FIXTURES_DIR", "/elsewhere/fixtures")
    assert str(fixtures_dir()) == "/elsewhere/fixtures"


def test_fallback_delivery_id_of_a_non_object_body() -> None:
    """A body that is not even an object still gets a delivery id."""
    assert len(jira_fallback_delivery_id([1, 2])) == 32  # type: ignore[arg-type]
