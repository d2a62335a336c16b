"""The event contract: JSON Schema files in sync, keys, ids."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import jsonschema
import pytest
from pydantic import ValidationError

from schemas import Topics, parse_event, partition_key, stable_event_id
from schemas.jsonschema_gen import OUT_DIR, render_all

NOW = datetime(2026, 1, 5, 12, tzinfo=UTC).isoformat()


def transition(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "type": "work_item.transitioned",
        "event_id": "e1",
        "source": "jira",
        "occurred_at": NOW,
        "received_at": NOW,
        "key": "jira:1",
        "item_id": "jira:1",
        "from_status": "To Do",
        "to_status": "In Progress",
    }
    body.update(overrides)
    return body


def test_committed_json_schemas_match_the_models() -> None:
    """schemas/jsonschema/*.json is what the models generate (run `make schemas`)."""
    rendered = render_all()
    on_disk = {p.name: p.read_text() for p in OUT_DIR.glob("*.json")}
    assert on_disk == rendered


def test_json_schema_accepts_what_the_models_accept() -> None:
    """A third-party producer validating with the JSON Schema agrees with the processor."""
    schema = json.loads((OUT_DIR / "CanonicalEvent.json").read_text())
    jsonschema.validate(transition(), schema)
    parse_event(transition())


def test_naive_timestamps_are_rejected() -> None:
    """Times without an offset are ambiguous, so the contract refuses them."""
    with pytest.raises(ValidationError):
        parse_event(transition(occurred_at="2026-01-05T12:00:00"))


def test_unknown_fields_are_rejected() -> None:
    """A typo in a field name is an error, not silently dropped data."""
    with pytest.raises(ValidationError):
        parse_event(transition(to_sttus="Done"))


def test_work_item_events_are_keyed_by_item() -> None:
    """All events of one work item share a partition key, so their order holds."""
    assert partition_key(parse_event(transition())) == "jira:1"


def test_stable_event_id_is_deterministic_and_part_sensitive() -> None:
    """The same parts give the same id; different parts a different one."""
    assert stable_event_id("jira", 1, "status", 9) == stable_event_id("jira", "1", "status", "9")
    assert stable_event_id("a", "bc") != stable_event_id("ab", "c")


def test_topics_are_namespaced_by_prefix() -> None:
    """Topic names carry the prefix, so deployments and tests can share a cluster."""
    assert Topics("x").all() == ("x.raw.v1", "x.events.v1", "x.dlq.v1")
