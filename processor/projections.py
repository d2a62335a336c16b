"""Projections: how stored events become derived tables.

A projection claims event types, names the entity each event belongs to, and
recomputes the derived rows of a set of entities from their full stored
history inside the batch's transaction. The processor knows nothing else
about it; adding a domain (DORA, services, ...) is adding a projection.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from psycopg import AsyncConnection

from schemas.events import CanonicalEvent


class Projection(Protocol):
    name: str
    event_types: frozenset[str]

    def entity_of(self, event: CanonicalEvent) -> str:
        """The entity whose derived rows this event can change."""
        ...

    async def refresh(
        self,
        conn: AsyncConnection[Any],
        entities: Sequence[str],
        fresh: Mapping[str, Sequence[CanonicalEvent]] | None = None,
    ) -> None:
        """Recompute the derived rows of ``entities`` from the ``events`` table.
        ``fresh``: the events of those entities that this transaction stored (a hint a
        projection may use to avoid reading them back; None when unknown)."""
        ...


class ProjectionRegistry:
    def __init__(self, projections: Iterable[Projection]) -> None:
        self.projections = tuple(projections)
        self._by_type: dict[str, Projection] = {}
        for projection in self.projections:
            for event_type in projection.event_types:
                if event_type in self._by_type:
                    raise ValueError(f"{event_type} is claimed twice")
                self._by_type[event_type] = projection

    def for_event(self, event: CanonicalEvent) -> Projection | None:
        return self._by_type.get(event.type)

    def get(self, name: str) -> Projection:
        for projection in self.projections:
            if projection.name == name:
                return projection
        raise KeyError(name)
