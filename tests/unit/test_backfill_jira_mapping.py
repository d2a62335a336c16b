"""Jira REST shapes → canonical events: the ids a webhook of the same change carries."""

from __future__ import annotations

import copy
import random
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collectors.backfill.jira_mapping import (
    embedded_histories,
    issue_events,
    jql_time,
    parse_changelog_page,
    parse_search_page,
    search_jql,
    status_categories,
    user_zone,
)
from collectors.jira import JiraPayloadError, created_event_id, normalize_jira
from processor.stages import StageConfig, load_stage_config
from schemas.events import WorkItemTransitioned, WorkItemUpserted
from tests.fake_sources import (
    JIRA_STATUSES,
    TES4_FILES,
    TES41_FILES,
    jira_issue_from_webhooks,
    synthetic_jira_issue,
    tes4_with_gap_filled,
)
from tests.fixtures import load_fixture

RECEIVED = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
CATEGORIES = status_categories(JIRA_STATUSES)


@pytest.fixture(scope="module")
def stages() -> StageConfig:
    return load_stage_config()


def transitions(events: list[Any]) -> list[WorkItemTransitioned]:
    return [e for e in events if isinstance(e, WorkItemTransitioned)]


def webhook_transitions(paths: tuple[str, ...], stages: StageConfig) -> dict[str, Any]:
    found = {}
    for path in paths:
        result = normalize_jira(load_fixture(path), received_at=RECEIVED, stages=stages)
        found.update({e.event_id: e for e in transitions(list(result.events))})
    return found


def test_every_recorded_cloud_transition_gets_the_webhook_event_id(stages: StageConfig) -> None:
    """TES-41 rebuilt as REST shows it maps to the webhook path's transition ids."""
    issue = jira_issue_from_webhooks(*TES41_FILES)
    events = issue_events(
        issue.issue, issue.histories, received_at=RECEIVED, stages=stages, categories=CATEGORIES
    )
    backfilled = {e.event_id: e for e in transitions(events)}
    webhook = webhook_transitions(TES41_FILES, stages)
    assert set(webhook) == set(backfilled)
    for event_id, hooked in webhook.items():
        ours = backfilled[event_id]
        assert (ours.from_status, ours.to_status, ours.sequence) == (
            hooked.from_status,
            hooked.to_status,
            hooked.sequence,
        )
        # history.created vs the delivery timestamp: the same change, ms apart.
        assert abs(ours.occurred_at - hooked.occurred_at) < timedelta(seconds=1)
    assert [
        (t.from_status, t.to_status)
        for t in sorted(backfilled.values(), key=lambda t: t.occurred_at)
    ] == [
        (None, "To Do"),
        ("To Do", "In Progress"),
        ("In Progress", "Done"),
        ("Done", "To Do"),
    ]


def test_server_issue_with_a_webhook_gap_gets_the_missing_change(stages: StageConfig) -> None:
    """TES-4's REST changelog has the move no webhook delivered; the rest share ids."""
    issue = tes4_with_gap_filled()
    events = issue_events(
        issue.issue, issue.histories, received_at=RECEIVED, stages=stages, categories=CATEGORIES
    )
    backfilled = {e.event_id: e for e in transitions(events)}
    webhook = webhook_transitions(TES4_FILES, stages)
    assert set(webhook) < set(backfilled)
    extra = [backfilled[i] for i in set(backfilled) - set(webhook)]
    assert sorted((t.from_status or "", t.to_status) for t in extra) == [
        ("", "In Progress"),
        ("In Progress", "Resolved"),
    ]
    gap = next(t for t in extra if t.from_status is not None)
    assert gap.occurred_at == datetime(2019, 8, 14, 3, 3, 2, 179000, tzinfo=UTC)
    assert gap.to_status_category == "done"


def test_initial_transition_starts_from_the_first_status_history(stages: StageConfig) -> None:
    """The initial status is the first status move's fromString, at fields.created."""
    issue = jira_issue_from_webhooks(*TES41_FILES)
    events = issue_events(
        issue.issue,
        list(reversed(issue.histories)),
        received_at=RECEIVED,
        stages=stages,
        categories=CATEGORIES,
    )
    (initial,) = [t for t in transitions(events) if t.from_status is None]
    assert initial.event_id == created_event_id("10040")
    assert initial.to_status == "To Do"
    assert initial.to_status_category == "new"
    assert initial.occurred_at == datetime(2019, 2, 16, 3, 1, 52, 971000, tzinfo=UTC)


def test_issue_without_status_history_starts_in_its_current_status(stages: StageConfig) -> None:
    """No status history: one initial transition into the current status and category."""
    issue = jira_issue_from_webhooks(*TES41_FILES)
    events = issue_events(issue.issue, [], received_at=RECEIVED, stages=stages)
    (only,) = transitions(events)
    assert (only.from_status, only.to_status, only.to_status_category) == (None, "To Do", "new")


def test_upsert_is_the_webhook_normalizers_reading_of_the_issue(stages: StageConfig) -> None:
    """The upsert carries the issue's fields, stamped with fields.updated."""
    issue = jira_issue_from_webhooks(*TES41_FILES)
    events = issue_events(issue.issue, issue.histories, received_at=RECEIVED, stages=stages)
    (upsert,) = [e for e in events if isinstance(e, WorkItemUpserted)]
    assert upsert.item_id == "jira:10040"
    assert upsert.display_key == "TES-41"
    assert upsert.status == "To Do"
    assert upsert.project == "TES"
    assert upsert.url == "https://some-instance-test.atlassian.net/browse/TES-41"
    assert upsert.occurred_at == datetime(2019, 2, 16, 3, 17, 6, 501000, tzinfo=UTC)
    assert upsert.key == "jira:10040"


def test_two_status_items_in_one_history_get_ordinals_in_order(stages: StageConfig) -> None:
    """Ordinals count status items only, whatever the other items around them."""
    issue = jira_issue_from_webhooks(*TES41_FILES)
    history = copy.deepcopy(issue.histories[-1])
    history["id"] = "99999"
    history["created"] = "2019-02-16T10:00:00.000-0800"
    history["items"] = [
        {"field": "resolution", "from": None, "to": "1", "toString": "Done"},
        {
            "field": "status",
            "from": "10001",
            "fromString": "To Do",
            "to": "3",
            "toString": "In Progress",
        },
        {"field": "Status", "fieldtype": "custom", "toString": "not the status"},
        {
            "field": "status",
            "from": "3",
            "fromString": "In Progress",
            "to": "10002",
            "toString": "Done",
        },
    ]
    events = issue_events(
        issue.issue,
        [*issue.histories, history],
        received_at=RECEIVED,
        stages=stages,
        categories=CATEGORIES,
    )
    both = [t for t in transitions(events) if t.occurred_at.hour == 18]
    assert [(t.to_status, t.sequence, t.to_status_category) for t in both] == [
        ("In Progress", 0, "indeterminate"),
        ("Done", 1, "done"),
    ]


def test_a_history_without_an_id_is_refused(stages: StageConfig) -> None:
    """A changelog history must carry its id: it is the change's identity."""
    issue = jira_issue_from_webhooks(*TES41_FILES)
    broken = [{k: v for k, v in h.items() if k != "id"} for h in issue.histories]
    with pytest.raises(JiraPayloadError, match="without an id"):
        issue_events(issue.issue, broken, received_at=RECEIVED, stages=stages)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), extra=st.integers(0, 40))
def test_any_history_order_gives_the_same_events(seed: int, extra: int) -> None:
    """Changelog pages arrive in any order (Cloud embeds newest first): same events."""
    stages = load_stage_config()
    issue = synthetic_jira_issue(
        7,
        created=datetime(2024, 1, 1, tzinfo=UTC),
        path=("To Do", "In Progress", "Done", "To Do", "In Progress", "Done"),
        other_histories=extra,
    )
    shuffled = list(issue.histories)
    random.Random(seed).shuffle(shuffled)
    a = issue_events(issue.issue, issue.histories, received_at=RECEIVED, stages=stages)
    b = issue_events(issue.issue, shuffled, received_at=RECEIVED, stages=stages)
    assert [e.model_dump() for e in a] == [e.model_dump() for e in b]
    assert len(transitions(a)) == 6


# -- JQL and pages --------------------------------------------------------------------


def test_jql_dates_are_the_users_zone_rounded_down_to_the_minute() -> None:
    """JQL reads dates in the user's zone to the minute: never round past a change."""
    at = datetime(2024, 1, 1, 8, 30, 59, 999000, tzinfo=UTC)
    assert jql_time(at, ZoneInfo("America/Los_Angeles")) == "2024-01-01 00:30"
    assert jql_time(at, UTC) == "2024-01-01 08:30"


def test_search_jql_pages_by_key_after_the_last_one_read() -> None:
    """Keyset pagination: key order, bounded by the last key of the previous page."""
    since = datetime(2024, 1, 1, tzinfo=UTC)
    assert search_jql("FLOW", since, UTC, None) == (
        'project = "FLOW" AND updated >= "2024-01-01 00:00" ORDER BY key ASC'
    )
    assert search_jql('A"B', since, UTC, "A-9") == (
        'project = "A\\"B" AND updated >= "2024-01-01 00:00" AND issuekey > "A-9" ORDER BY key ASC'
    )


def test_user_zone_falls_back_to_none_for_unknown_zones() -> None:
    """An unknown or missing timeZone is reported as unknown, not guessed."""
    assert user_zone({"timeZone": "Europe/Berlin"}) == ZoneInfo("Europe/Berlin")
    assert user_zone({"timeZone": "Mars/Olympus"}) is None
    assert user_zone({}) is None


@pytest.mark.parametrize(
    ("body", "more", "total"),
    [
        ({"issues": [{"id": "1"}], "isLast": False, "nextPageToken": "t"}, True, None),
        ({"issues": [{"id": "1"}], "isLast": True}, False, None),
        ({"issues": [{"id": "1"}], "nextPageToken": None}, False, None),
        ({"startAt": 0, "maxResults": 1, "total": 3, "issues": [{"id": "1"}]}, True, 3),
        ({"startAt": 2, "maxResults": 1, "total": 3, "issues": [{"id": "1"}]}, False, 3),
        ({"issues": []}, False, None),
    ],
)
def test_search_pages_of_both_flavours(body: dict[str, Any], more: bool, total: int | None) -> None:
    """Cloud (isLast/nextPageToken) and Data Center (startAt/total) say if more follow."""
    page = parse_search_page(body, requested=1)
    assert (page.more, page.total) == (more, total)


def test_changelog_pages_of_both_flavours() -> None:
    """``values``/``isLast`` (Cloud pages) and ``histories``/``total`` (embedded)."""
    cloud = parse_changelog_page({"startAt": 0, "total": 5, "isLast": False, "values": [{}]})
    assert (cloud.is_last, cloud.total) == (False, 5)
    embedded = parse_changelog_page({"startAt": 0, "total": 2, "histories": [{}, {}]})
    assert embedded.is_last
    with pytest.raises(JiraPayloadError):
        parse_changelog_page({"values": "nope"})


def test_an_embedded_changelog_counts_only_when_complete() -> None:
    """Cloud embeds the latest 100 histories; with more, the changelog must be paged."""
    full = {"changelog": {"startAt": 0, "maxResults": 2, "total": 2, "histories": [{}, {}]}}
    capped = {"changelog": {"startAt": 0, "maxResults": 100, "total": 150, "histories": [{}] * 100}}
    assert embedded_histories(full) == [{}, {}]
    assert embedded_histories(capped) is None
    assert embedded_histories({"changelog": {"histories": [{}]}}) is None  # no total
    assert embedded_histories({}) is None
