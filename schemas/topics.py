"""Topic names and the key rule.

Three topics, each name prefixed by a configurable namespace so several
deployments (or tests) can share a cluster:

- ``<prefix>.raw.v1`` — the raw source payloads as received (kept so the
  canonical stream can be rebuilt after a mapping fix), keyed by delivery id.
- ``<prefix>.events.v1`` — canonical events, keyed by :func:`partition_key`.
- ``<prefix>.dlq.v1`` — authentic events the processor could not fold, with the
  reason and their original topic/partition/offset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_PREFIX = "flowmetrics"


@dataclass(frozen=True)
class Topics:
    prefix: str = DEFAULT_PREFIX

    @property
    def raw(self) -> str:
        return f"{self.prefix}.raw.v1"

    @property
    def events(self) -> str:
        return f"{self.prefix}.events.v1"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}.dlq.v1"

    def all(self) -> tuple[str, str, str]:
        return (self.raw, self.events, self.dlq)


def partition_key(event: Any) -> str:
    """The key rule: events about one entity share a key, so their order holds.

    - work items and pull requests: the work item id;
    - commits: the repository (commits and the deployments that ship them are
      traced per repository);
    - deployments: ``<repo>`` as well, so a deployment's status updates and the
      rollbacks that follow stay in order;
    - incidents: the service;
    - service declarations: the service; service edges: the (client, server) pair,
      so one edge's observations stay in order.
    """
    kind = event.type.split(".", 1)[0]
    if kind in ("work_item", "pull_request"):
        return str(event.item_id)
    if kind in ("change", "deployment"):
        return str(event.repo)
    if kind == "incident":
        return f"incident:{event.service}"
    if kind == "service":
        return f"service:{event.service}"
    if kind == "service_edge":
        return f"service_edge:{event.client}->{event.server}"
    raise ValueError(f"no key rule for event type {event.type!r}")
