"""Jira webhook body → canonical events. Pure: no I/O, no clock (``received_at`` is given).

What each ``webhookEvent`` becomes (``occurred_at`` is the body ``timestamp``,
milliseconds since the epoch, unless said otherwise):

- ``jira:issue_created`` → ``work_item.upserted`` + the initial
  ``work_item.transitioned`` (``from_status`` null → the status the issue was
  created in), whose ``occurred_at`` is ``issue.fields.created``.
- ``jira:issue_updated`` → ``work_item.upserted`` + one ``work_item.transitioned``
  per ``status`` item of ``changelog.items``.
- ``jira:issue_deleted`` → ``work_item.deleted``.
- anything else (``comment_*``, ``sprint_*``, ``worklog_*`` ...) → nothing, with
  the reason in :attr:`JiraNormalized.ignored`.

Event ids are :func:`schemas.events.stable_event_id` over the change's identity
at Jira, never over the delivery, so a retried delivery and a REST backfill of
the same change get the same id and fold once:

======================  ==============================================================
upserted                ``("jira", issue id, "upsert", timestamp ms)``
initial transition      ``("jira", issue id, "created")``
status transition       ``("jira", issue id, "status", changelog id, status ordinal)``
deleted                 ``("jira", issue id, "deleted")``
======================  ==============================================================

Backfill contract. A webhook's ``changelog.id`` is the id of the same change's
history in ``GET /rest/api/2/issue/{id}?expand=changelog``
(``changelog.histories[].id``). The *status ordinal* is the position of the item
among the **status items only** of that history (0 for the first, which in
practice is the only one), so it does not depend on how Jira orders the other
items (``resolution`` comes before ``status`` in Jira Cloud bodies and after it
in Jira Server bodies). A backfill reproduces every transition id with
:func:`status_items` and :func:`status_event_id`, and the initial transition
with :func:`created_event_id` (its status is the first status history's
``fromString``, or the current status if there is none). The status item of an
``issue_created`` changelog is not a change of its own: it is the initial status.

Exceptions::

    ValueError
    └── JiraPayloadError   the body cannot be normalized; the message names the field
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import ValidationError

from processor.stages import StageConfig
from schemas.events import (
    CanonicalEvent,
    WorkItemDeleted,
    WorkItemTransitioned,
    WorkItemUpserted,
    stable_event_id,
)
from schemas.topics import partition_key

SOURCE = "jira"
ISSUE_CREATED = "jira:issue_created"
ISSUE_UPDATED = "jira:issue_updated"
ISSUE_DELETED = "jira:issue_deleted"

_E = TypeVar("_E", WorkItemUpserted, WorkItemTransitioned, WorkItemDeleted)


class JiraPayloadError(ValueError):
    """A Jira webhook body that cannot be normalized; the message says which field."""


@dataclass(frozen=True)
class JiraNormalized:
    events: tuple[CanonicalEvent, ...]
    ignored: str | None = None  # why nothing is published, when ``events`` is empty


def normalize_jira(
    body: dict[str, Any], *, received_at: datetime, stages: StageConfig
) -> JiraNormalized:
    """Canonical events for one Jira webhook delivery (raises :class:`JiraPayloadError`)."""
    if received_at.tzinfo is None:
        raise ValueError("received_at must be timezone-aware")
    if not isinstance(body, dict):
        raise JiraPayloadError("body must be a JSON object")
    event = body.get("webhookEvent")
    if event is None:
        raise JiraPayloadError("webhookEvent is missing")
    if not isinstance(event, str) or not event:
        raise JiraPayloadError("webhookEvent must be a non-empty string")
    if event not in (ISSUE_CREATED, ISSUE_UPDATED, ISSUE_DELETED):
        return JiraNormalized(events=(), ignored=f"event {event} not handled")

    issue = _required_obj(body, "issue", "issue")
    issue_id = _issue_id(issue)
    display_key = _required_str(issue, "key", "issue.key")
    timestamp = _timestamp(body)
    envelope = {"source": SOURCE, "occurred_at": timestamp, "received_at": received_at}
    item_id = f"{SOURCE}:{issue_id}"

    if event == ISSUE_DELETED:
        deleted = _keyed(
            WorkItemDeleted, event_id=deleted_event_id(issue_id), item_id=item_id, **envelope
        )
        return JiraNormalized(events=(deleted,))

    fields = _required_obj(issue, "fields", "issue.fields")
    status_obj = _obj(fields, "status", "issue.fields.status")
    status = _str(status_obj, "name", "issue.fields.status.name")
    category_obj = _obj(status_obj, "statusCategory", "issue.fields.status.statusCategory")
    category = _str(category_obj, "key", "issue.fields.status.statusCategory.key")
    created_at = _created_at(fields) or timestamp
    project = _project(fields, display_key)

    events: list[CanonicalEvent] = [
        _keyed(
            WorkItemUpserted,
            event_id=upsert_event_id(
                issue_id, body["timestamp"], _changelog_id_or_none(body.get("changelog"))
            ),
            item_id=item_id,
            display_key=display_key,
            title=_str(fields, "summary", "issue.fields.summary") or "",
            item_type=_name(fields, "issuetype") or "unknown",
            project=project,
            team=stages.team_for_project(project),
            status=status,
            status_category=category,
            assignee=_str(
                _obj(fields, "assignee", "issue.fields.assignee"),
                "displayName",
                "issue.fields.assignee.displayName",
            ),
            labels=_labels(fields),
            created_at=created_at,
            url=_browse_url(issue, display_key),
            **envelope,
        )
    ]

    changelog = _obj(body, "changelog", "changelog")
    changes = status_items(_items(changelog))
    if event == ISSUE_CREATED:
        # The creation changelog's status item *is* the initial status, not a change.
        initial = _to_status(changes[0][1]) if changes else status
        if initial is None:
            raise JiraPayloadError("issue.fields.status.name is missing on jira:issue_created")
        initial_transition = _keyed(
            WorkItemTransitioned,
            event_id=created_event_id(issue_id),
            item_id=item_id,
            from_status=None,
            to_status=initial,
            to_status_category=category if initial == status else None,
            **{**envelope, "occurred_at": created_at},
        )
        return JiraNormalized(events=(*events, initial_transition))

    history_id = _changelog_id(changelog) if changes else ""
    for ordinal, item in changes:
        to_status = _to_status(item)
        events.append(
            _keyed(
                WorkItemTransitioned,
                event_id=status_event_id(issue_id, history_id, ordinal),
                item_id=item_id,
                from_status=_str(item, "fromString", "changelog.items[].fromString"),
                to_status=to_status,
                # The body's category describes the status *after* the whole change.
                to_status_category=category if to_status == status else None,
                sequence=ordinal,
                **envelope,
            )
        )
    return JiraNormalized(events=tuple(events))


# -- event ids (shared with the REST backfill) -------------------------------------


def upsert_event_id(issue_id: str, timestamp_ms: int, history_id: str | None = None) -> str:
    """Two deliveries can share a millisecond; the changelog id tells them apart."""
    return stable_event_id(SOURCE, issue_id, "upsert", timestamp_ms, history_id)


def _changelog_id_or_none(changelog: Any) -> str | None:
    if isinstance(changelog, dict) and changelog.get("id") is not None:
        return str(changelog["id"])
    return None


def created_event_id(issue_id: str) -> str:
    """The initial transition (``from_status`` null) of an issue."""
    return stable_event_id(SOURCE, issue_id, "created")


def status_event_id(issue_id: str, history_id: str, ordinal: int) -> str:
    """A status change: changelog history id and the status ordinal within it."""
    return stable_event_id(SOURCE, issue_id, "status", history_id, ordinal)


def deleted_event_id(issue_id: str) -> str:
    return stable_event_id(SOURCE, issue_id, "deleted")


def status_items(items: Sequence[Any]) -> list[tuple[int, dict[str, Any]]]:
    """The status changes of one changelog history, each with its status ordinal.

    A status item has ``field`` "status" (Jira writes "status" or "Status") and is
    not a custom field that happens to be called so.
    """
    found: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise JiraPayloadError(f"changelog.items[{i}] must be an object")
        field = item.get("field")
        if (
            isinstance(field, str)
            and field.strip().casefold() == "status"
            and item.get("fieldtype") != "custom"
        ):
            found.append(item)
    return list(enumerate(found))


def parse_jira_datetime(value: str) -> datetime:
    """A Jira date-time (``2019-02-15T19:15:40.470-0800``) as an aware datetime in UTC."""
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"no UTC offset in {value!r}")
    return parsed.astimezone(UTC)


def jira_fallback_delivery_id(body: dict[str, Any]) -> str:
    """A stable delivery id for bodies without ``X-Atlassian-Webhook-Identifier``.

    Hashes (issue id, changelog id — or the timestamp when there is no changelog,
    webhookEvent, comment id): a retry of a delivery hashes the same. Never raises.
    """
    if not isinstance(body, dict):
        body = {}

    def child_id(key: str) -> Any:
        child = body.get(key)
        return child.get("id") if isinstance(child, dict) else None

    changelog_id = child_id("changelog")
    marker = changelog_id if changelog_id is not None else body.get("timestamp")
    issue_id, event, comment_id = child_id("issue"), body.get("webhookEvent"), child_id("comment")
    return stable_event_id(SOURCE, "delivery", issue_id, marker, event, comment_id)


# -- field access ------------------------------------------------------------------


def _keyed(model: type[_E], **fields: Any) -> _E:
    """Build an event with its partition key (the key rule needs the event itself)."""
    try:
        event = model(key="-", **fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise JiraPayloadError(f"cannot build {model.__name__}: {where}: {first['msg']}") from exc
    return event.model_copy(update={"key": partition_key(event)})


def _obj(parent: dict[str, Any] | None, key: str, where: str) -> dict[str, Any] | None:
    value = None if parent is None else parent.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise JiraPayloadError(f"{where} must be an object")
    return value


def _required_obj(parent: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = _obj(parent, key, where)
    if value is None:
        raise JiraPayloadError(f"{where} is missing")
    return value


def _str(parent: dict[str, Any] | None, key: str, where: str) -> str | None:
    value = None if parent is None else parent.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise JiraPayloadError(f"{where} must be a string")
    return value


def _required_str(parent: dict[str, Any], key: str, where: str) -> str:
    value = _str(parent, key, where)
    if value is None:
        raise JiraPayloadError(f"{where} is missing")
    return value


def _to_status(item: dict[str, Any]) -> str:
    return _required_str(item, "toString", "changelog.items[].toString (status)")


def _issue_id(issue: dict[str, Any]) -> str:
    value = issue.get("id")
    if value is None or value == "":
        raise JiraPayloadError("issue.id is missing")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise JiraPayloadError("issue.id must be a string or an integer")
    return str(value)


def _timestamp(body: dict[str, Any]) -> datetime:
    value = body.get("timestamp")
    if value is None:
        raise JiraPayloadError("timestamp is missing")
    if isinstance(value, bool) or not isinstance(value, int):
        raise JiraPayloadError("timestamp must be an integer (milliseconds since the epoch)")
    try:
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise JiraPayloadError(f"timestamp {value} is out of range") from exc


def _created_at(fields: dict[str, Any]) -> datetime | None:
    value = _str(fields, "created", "issue.fields.created")
    if value is None:
        return None
    try:
        return parse_jira_datetime(value)
    except ValueError as exc:
        raise JiraPayloadError(f"issue.fields.created is not a date-time: {value!r}") from exc


def _project(fields: dict[str, Any], display_key: str) -> str:
    project = _obj(fields, "project", "issue.fields.project")
    key = _str(project, "key", "issue.fields.project.key")
    # Without a project object, the key's prefix (TES-41 → TES) is the project key.
    return key or display_key.rsplit("-", 1)[0]


def _name(fields: dict[str, Any], key: str) -> str | None:
    return _str(_obj(fields, key, f"issue.fields.{key}"), "name", f"issue.fields.{key}.name")


def _labels(fields: dict[str, Any]) -> tuple[str, ...]:
    value = fields.get("labels")
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise JiraPayloadError("issue.fields.labels must be a list of strings")
    return tuple(value)


def _browse_url(issue: dict[str, Any], display_key: str) -> str | None:
    self_url = issue.get("self")
    if not isinstance(self_url, str) or not self_url.startswith(("https://", "http://")):
        return None
    base, sep, _ = self_url.partition("/rest/api/")
    return f"{base}/browse/{display_key}" if sep else None


def _items(changelog: dict[str, Any] | None) -> list[Any]:
    items = None if changelog is None else changelog.get("items")
    if items is None:
        return []
    if not isinstance(items, list):
        raise JiraPayloadError("changelog.items must be a list")
    return items


def _changelog_id(changelog: dict[str, Any] | None) -> str:
    """The changelog history id, needed (and checked) only when there is a status change."""
    value = None if changelog is None else changelog.get("id")
    if value is None or value == "":
        raise JiraPayloadError("changelog.id is missing on a change with items")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise JiraPayloadError("changelog.id must be a string or an integer")
    return str(value)
