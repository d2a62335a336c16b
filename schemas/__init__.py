"""The flowmetrics event contract: canonical events, topic names and the key rule.

This package depends on nothing else of ours. Any Kafka producer that publishes
JSON matching ``schemas/jsonschema/*.json`` to the canonical topic, keyed as
:func:`schemas.topics.partition_key` says, is a first-class source.
"""

from schemas.events import (
    SCHEMA_VERSION,
    CanonicalEvent,
    ChangeCommitted,
    DeploymentRecorded,
    IncidentOpened,
    IncidentResolved,
    PullRequestEvent,
    WorkItemDeleted,
    WorkItemTransitioned,
    WorkItemUpserted,
    parse_event,
    parse_events,
    stable_event_id,
)
from schemas.topics import Topics, partition_key

__all__ = [
    "SCHEMA_VERSION",
    "CanonicalEvent",
    "ChangeCommitted",
    "DeploymentRecorded",
    "IncidentOpened",
    "IncidentResolved",
    "PullRequestEvent",
    "Topics",
    "WorkItemDeleted",
    "WorkItemTransitioned",
    "WorkItemUpserted",
    "parse_event",
    "parse_events",
    "partition_key",
    "stable_event_id",
]
