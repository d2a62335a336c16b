"""Topic configuration as code: partitions and broker-side configs per topic.

``flowmetrics migrate`` (and the start-up of every service) hands these specs
to :func:`infra.kafka.ensure_topics`, which creates a missing topic with its
spec and brings an existing topic's configs to it. Partitions are never added
automatically: adding them moves keys to other partitions, which is an
operator's decision (docs/operations.md, "Scaling").

====== ========== =========================== =====================================
topic  partitions cleanup / retention          why
====== ========== =========================== =====================================
raw    6          compact, kept forever, gzip  keyed by delivery id, so compaction
                                               drops only a redelivery of the same
                                               payload; every distinct delivery is
                                               kept for a replay after a mapping fix
events 12         delete after 30 days         every folded event is also in the
                                               ``events`` table; 30 days covers the
                                               gap between backups (restore, then
                                               replay from the topic)
dlq    1          delete after 90 days         kept for inspection and re-drive
====== ========== =========================== =====================================

``events`` has the most partitions because processor replicas scale up to it.
Raw and dead-letter records carry a whole source payload (up to
``FLOW_MAX_BODY_BYTES``), hence their larger ``max.message.bytes``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas.topics import Topics

DAY_MS = 24 * 60 * 60 * 1000
PAYLOAD_MAX_BYTES = 4 * 1024 * 1024

# DescribeConfigs v1+ ``config_source``: set on the topic itself (not inherited).
DYNAMIC_TOPIC_CONFIG = 1


@dataclass(frozen=True)
class TopicSpec:
    partitions: int
    configs: Mapping[str, str] = field(default_factory=dict)
    # One broker in docker-compose and the embedded runtime. A multi-broker
    # cluster needs 3 here (docs/operations.md, "Kafka replication").
    replication_factor: int = 1


def topic_specs(topics: Topics) -> dict[str, TopicSpec]:
    """The spec of each of the deployment's topics, by topic name."""
    return {
        topics.raw: TopicSpec(
            partitions=6,
            configs={
                "cleanup.policy": "compact",
                "retention.ms": "-1",
                "compression.type": "gzip",
                "max.message.bytes": str(PAYLOAD_MAX_BYTES),
            },
        ),
        topics.events: TopicSpec(
            partitions=12,
            configs={"cleanup.policy": "delete", "retention.ms": str(30 * DAY_MS)},
        ),
        topics.dlq: TopicSpec(
            partitions=1,
            configs={
                "cleanup.policy": "delete",
                "retention.ms": str(90 * DAY_MS),
                "max.message.bytes": str(PAYLOAD_MAX_BYTES),
            },
        ),
    }


def topic_overrides(resource: Mapping[str, Any]) -> dict[str, str]:
    """The configs set on the topic itself, from one DescribeConfigs resource.

    Version 0 of the response says ``is_default``; later ones say where each
    value comes from (``config_source``).
    """
    overrides: dict[str, str] = {}
    for entry in resource.get("config_entries", ()):
        if "config_source" in entry:
            own = entry["config_source"] == DYNAMIC_TOPIC_CONFIG
        else:
            own = not entry.get("is_default", True)
        if own and entry.get("config_value") is not None:
            overrides[entry["config_names"]] = entry["config_value"]
    return overrides


def configs_to_apply(spec: TopicSpec, overrides: Mapping[str, str]) -> dict[str, str] | None:
    """The full set of topic configs to send, or None when the topic already matches.

    AlterConfigs replaces every override of a topic, so the answer keeps the
    overrides an operator set for keys the spec does not name.
    """
    if all(overrides.get(key) == value for key, value in spec.configs.items()):
        return None
    return {**overrides, **spec.configs}
