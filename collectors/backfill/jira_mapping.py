"""Jira REST shapes → canonical events, and the JQL the reader sends. Pure: no I/O.

One issue (``GET .../search`` item) and its full changelog (every history,
from ``/issue/{id}/changelog`` pages or the ``expand=changelog`` embed) become:

- one ``work_item.upserted``: the issue as it is now, built by the webhook
  normalizer itself (a synthetic ``jira:issue_updated`` body stamped with
  ``fields.updated`` and the latest history id), so fields are read one way;
- the initial ``work_item.transitioned`` (``from_status`` null), id
  :func:`~collectors.jira.created_event_id`, at ``fields.created``, into the
  first status history's ``fromString`` (or the current status if none);
- one ``work_item.transitioned`` per status item of every history, id
  :func:`~collectors.jira.status_event_id` (history id, status ordinal),
  ``occurred_at`` = the history's ``created``.

Those ids are exactly the webhook path's, so a change seen both ways folds once.
The status category of each target status comes from ``/rest/api/2/status``
when the reader could fetch it (webhooks only know the current one).

Both API flavours are read: Jira Cloud (``/rest/api/3/search/jql``:
``nextPageToken``/``isLast``; changelog pages ``values``/``isLast``) and Jira
Data Center (``/rest/api/2/search``: ``startAt``/``maxResults``/``total``;
changelog ``histories``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from collectors.jira import (
    SOURCE,
    JiraPayloadError,
    created_event_id,
    normalize_jira,
    parse_jira_datetime,
    status_event_id,
    status_items,
)
from processor.stages import StageConfig
from schemas.events import CanonicalEvent, WorkItemTransitioned
from schemas.topics import partition_key

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# What the upsert needs; everything else would only cost bandwidth.
ISSUE_FIELDS = (
    "summary",
    "status",
    "issuetype",
    "project",
    "assignee",
    "labels",
    "created",
    "updated",
)


# -- JQL ----------------------------------------------------------------------------


def jql_literal(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def jql_time(ts: datetime, zone: tzinfo) -> str:
    """A JQL date-time literal. JQL reads it in the searching user's time zone and
    only to the minute, so this rounds *down*: the search may re-read a few
    changes, never skip one."""
    return ts.astimezone(zone).strftime("%Y-%m-%d %H:%M")


def search_jql(project: str, since: datetime, zone: tzinfo, after_key: str | None) -> str:
    """Issues of ``project`` updated since ``since``, in key order after ``after_key``.

    Key order (not ``updated``) with a key bound per page (keyset pagination):
    an issue updated during the pass does not move, and an issue leaving the
    result set cannot shift a later one onto a page already read. An issue
    updated during the pass is re-read by the next pass, which starts before it.
    """
    clauses = [
        f"project = {jql_literal(project)}",
        f"updated >= {jql_literal(jql_time(since, zone))}",
    ]
    if after_key is not None:
        clauses.append(f"issuekey > {jql_literal(after_key)}")
    return " AND ".join(clauses) + " ORDER BY key ASC"


def user_zone(myself: Any) -> tzinfo | None:
    """The time zone JQL dates are read in (``GET /rest/api/2/myself`` ``timeZone``)."""
    name = myself.get("timeZone") if isinstance(myself, dict) else None
    if not isinstance(name, str) or not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def key_number(key: str) -> int:
    """``FLOW-123`` → 123 (for comparing keys of one project)."""
    try:
        return int(key.rsplit("-", 1)[1])
    except (IndexError, ValueError) as exc:
        raise JiraPayloadError(f"issue key {key!r} has no number") from exc


# -- pages --------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchPage:
    issues: list[dict[str, Any]]
    more: bool  # the query has results after this page
    total: int | None
    next_page_token: str | None = None


def parse_search_page(body: Any, *, requested: int) -> SearchPage:
    """A page of ``/rest/api/3/search/jql`` (Cloud) or ``/rest/api/2/search`` (DC)."""
    if not isinstance(body, dict):
        raise JiraPayloadError("search response must be an object")
    issues = body.get("issues")
    if not isinstance(issues, list) or not all(isinstance(i, dict) for i in issues):
        raise JiraPayloadError("search response: issues must be a list of objects")
    total = _int(body.get("total"))
    token = body.get("nextPageToken") if isinstance(body.get("nextPageToken"), str) else None
    if isinstance(body.get("isLast"), bool):
        more = not body["isLast"]
    elif "nextPageToken" in body:
        more = bool(token)
    elif total is not None:
        more = (_int(body.get("startAt")) or 0) + len(issues) < total
    else:
        more = len(issues) >= requested
    return SearchPage(issues, more and bool(issues), total, token)


@dataclass(frozen=True)
class ChangelogPage:
    histories: list[dict[str, Any]]
    start_at: int
    total: int | None
    is_last: bool


def parse_changelog_page(body: Any) -> ChangelogPage:
    """``/issue/{id}/changelog`` (``values``/``isLast``) or an embedded ``changelog``
    (``histories``/``total``)."""
    if not isinstance(body, dict):
        raise JiraPayloadError("changelog must be an object")
    values = body.get("values", body.get("histories"))
    if not isinstance(values, list) or not all(isinstance(v, dict) for v in values):
        raise JiraPayloadError("changelog: values/histories must be a list of objects")
    start = _int(body.get("startAt")) or 0
    total = _int(body.get("total"))
    if isinstance(body.get("isLast"), bool):
        is_last = body["isLast"]
    elif total is not None:
        is_last = start + len(values) >= total
    else:
        is_last = True
    return ChangelogPage(values, start, total, is_last or not values)


def embedded_histories(issue: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The ``expand=changelog`` histories when they are the *whole* changelog.

    Jira Cloud embeds at most the 100 most recent histories; when ``total`` says
    there are more (or does not say), the reader pages the changelog instead.
    """
    changelog = issue.get("changelog")
    if not isinstance(changelog, dict):
        return None
    page = parse_changelog_page(changelog)
    if page.start_at != 0 or page.total is None or len(page.histories) < page.total:
        return None
    return page.histories


def status_categories(statuses: Any) -> dict[str, str]:
    """``GET /rest/api/2/status`` → status id → category key (new, indeterminate, done)."""
    found: dict[str, str] = {}
    if not isinstance(statuses, list):
        return found
    for status in statuses:
        if not isinstance(status, dict):
            continue
        category = status.get("statusCategory")
        key = category.get("key") if isinstance(category, dict) else None
        if status.get("id") is not None and isinstance(key, str):
            found[str(status["id"])] = key
    return found


# -- events -------------------------------------------------------------------------


def issue_events(
    issue: dict[str, Any],
    histories: Sequence[dict[str, Any]],
    *,
    received_at: datetime,
    stages: StageConfig,
    categories: Mapping[str, str] | None = None,
) -> list[CanonicalEvent]:
    """Every canonical event of one issue and its full changelog (any order)."""
    categories = categories or {}
    issue_id = _issue_id(issue)
    fields = issue.get("fields")
    if not isinstance(fields, dict):
        raise JiraPayloadError(f"issue {issue_id}: fields is missing")
    created = _time(fields.get("created"), "issue.fields.created")
    updated = _time(fields.get("updated") or fields.get("created"), "issue.fields.updated")
    ordered = sorted(histories, key=_history_order)

    upsert_body = {
        "webhookEvent": "jira:issue_updated",
        "timestamp": (updated - _EPOCH) // timedelta(milliseconds=1),
        "issue": issue,
        "changelog": {"id": str(ordered[-1]["id"]), "items": []} if ordered else None,
    }
    (upsert,) = normalize_jira(upsert_body, received_at=received_at, stages=stages).events
    current = getattr(upsert, "status", None)
    current_category = getattr(upsert, "status_category", None)

    changes = [
        (history, ordinal, item)
        for history in ordered
        for ordinal, item in status_items(_items(history))
    ]
    item_id = f"{SOURCE}:{issue_id}"
    first_item = changes[0][2] if changes else None
    initial = _text(first_item, "fromString") if first_item else None
    initial = initial or current
    if initial is None:
        raise JiraPayloadError(f"issue {issue_id}: no status to start from")
    initial_category = (
        categories.get(str(first_item.get("from"))) if first_item is not None else None
    ) or (current_category if initial == current else None)
    events: list[CanonicalEvent] = [
        upsert,
        _transition(
            event_id=created_event_id(issue_id),
            item_id=item_id,
            occurred_at=created,
            received_at=received_at,
            from_status=None,
            to_status=initial,
            to_status_category=initial_category,
            sequence=0,
        ),
    ]
    for history, ordinal, item in changes:
        to_status = _text(item, "toString")
        if to_status is None:
            raise JiraPayloadError(f"issue {issue_id} history {history.get('id')}: no toString")
        category = categories.get(str(item.get("to"))) or (
            current_category if to_status == current else None
        )
        events.append(
            _transition(
                event_id=status_event_id(issue_id, str(history["id"]), ordinal),
                item_id=item_id,
                occurred_at=_time(history.get("created"), "changelog history created"),
                received_at=received_at,
                from_status=_text(item, "fromString"),
                to_status=to_status,
                to_status_category=category,
                sequence=ordinal,
            )
        )
    return events


def _transition(**fields: Any) -> WorkItemTransitioned:
    event = WorkItemTransitioned(source=SOURCE, key="-", **fields)
    return event.model_copy(update={"key": partition_key(event)})


def _issue_id(issue: dict[str, Any]) -> str:
    value = issue.get("id")
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise JiraPayloadError("issue.id is missing")
    return str(value)


def _history_order(history: dict[str, Any]) -> tuple[datetime, int, str]:
    if history.get("id") is None:
        raise JiraPayloadError("changelog history without an id")
    hid = str(history["id"])
    created = _time(history.get("created"), f"changelog history {hid} created")
    return created, int(hid) if hid.isdigit() else 0, hid


def _items(history: dict[str, Any]) -> list[Any]:
    items = history.get("items")
    if items is None:
        return []
    if not isinstance(items, list):
        raise JiraPayloadError(f"changelog history {history.get('id')}: items must be a list")
    return items


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(obj: dict[str, Any] | None, key: str) -> str | None:
    value = None if obj is None else obj.get(key)
    return value if isinstance(value, str) and value else None


def _time(value: Any, where: str) -> datetime:
    if not isinstance(value, str):
        raise JiraPayloadError(f"{where} is missing")
    try:
        return parse_jira_datetime(value)
    except ValueError as exc:
        raise JiraPayloadError(f"{where} is not a date-time: {value!r}") from exc
