"""SQL adapter of the DORA projection: find the services an event batch touches,
load their history, replace their derived rows.

Entities: commits, pull requests and deployments belong to ``repo:<repo>``;
incidents to ``service:<service>``. The unit of recomputation is a *service*,
because incident attribution needs every production deployment of the service
and lead times need the history of every repository that deploys into it. So a
refresh widens its entities to services:

- a touched repository → the services its deployments name (in the stored
  events, and in the rows derived before, so a deployment that moved service
  when the repository → service mapping changed leaves its old service too);
- a service → every repository that deploys into it (from the rows derived
  before, plus the touched repositories' new deployment events).

Then :func:`processor.dora.fold_service` recomputes each service from scratch
and its rows are replaced: deleted by service (and by key, for the rare row
that moved service) and re-COPYed, inside the batch's transaction. A
transaction-scoped advisory lock per service keeps two processors from
replacing the same service's rows at once.

With an ``attribution`` step (:class:`processor.services_store.IncidentAttribution`),
incidents without an explicit link are then re-attributed through the service
dependency graph — those of the refreshed services and of the services that
depend on them — and the ``incident`` failures follow (``docs/services.md``).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from psycopg import AsyncConnection

from processor.copy_rows import copy_rows, pg_types
from processor.dora import (
    ChangeRow,
    DeploymentRow,
    DoraConfig,
    DoraEvent,
    IncidentRow,
    ServiceProjection,
    fold_service,
)
from schemas.events import CanonicalEvent, parse_event_json

if TYPE_CHECKING:
    from processor.services_store import IncidentAttribution

REPO, SERVICE = "repo:", "service:"

_PRODUCTION_COLUMNS = (
    "deployment_id",
    "finished_at",
    "service",
    "repo",
    "team",
    "environment",
    "succeeded",
    "failed",
    "failure_reason",
)


def _lock_key(service: str) -> int:
    """A stable signed 64-bit advisory lock key for a service."""
    digest = hashlib.sha256(f"flowmetrics.dora:{service}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


# A getter per row type: dataclasses.astuple deep-copies every value (profiled).
_ROW_GETTERS = {t: attrgetter(*pg_types(t)[0]) for t in (DeploymentRow, ChangeRow, IncidentRow)}
_PRODUCTION_ROW = attrgetter(*_PRODUCTION_COLUMNS)


def _row(value: DeploymentRow | ChangeRow | IncidentRow) -> tuple[Any, ...]:
    row: tuple[Any, ...] = _ROW_GETTERS[type(value)](value)
    return row


class DoraProjection:
    name = "dora"
    event_types = frozenset(
        {
            "change.committed",
            # Only merges link commits to deployments; the other pull request events stay
            # free for a projection that needs them, and refresh nothing here.
            "pull_request.merged",
            "deployment.recorded",
            "incident.opened",
            "incident.resolved",
        }
    )

    def __init__(self, config: DoraConfig, attribution: IncidentAttribution | None = None) -> None:
        self.config = config
        self.attribution = attribution

    def entity_of(self, event: CanonicalEvent) -> str:
        if event.type.startswith("incident."):
            return SERVICE + str(getattr(event, "service"))  # noqa: B009 - both incident types
        return REPO + str(getattr(event, "repo"))  # noqa: B009 - every other claimed type

    async def refresh(
        self,
        conn: AsyncConnection[Any],
        entities: Sequence[str],
        fresh: Mapping[str, Sequence[CanonicalEvent]] | None = None,
    ) -> None:
        repos = {e.removeprefix(REPO) for e in entities if e.startswith(REPO)}
        services = {e.removeprefix(SERVICE) for e in entities if e.startswith(SERVICE)}
        feeds: dict[str, set[str]] = defaultdict(set)  # service → repositories deploying to it
        async with conn.cursor() as cur:
            if repos:
                await cur.execute(
                    """select distinct payload->>'service', payload->>'repo' from events
                       where projection = %s and type = 'deployment.recorded'
                         and entity = any(%s)""",
                    (self.name, [REPO + r for r in sorted(repos)]),
                )
                pairs = await cur.fetchall()
                await cur.execute(
                    "select distinct service from deployments where repo = any(%s)",
                    (sorted(repos),),
                )
                services |= {s for (s,) in await cur.fetchall()}
                services |= {s for s, _ in pairs}
                for service, repo in pairs:
                    feeds[service].add(repo)
            if not services:
                return  # commits of a repository that has never deployed: nothing derives
            # A service's events come from several partitions (repository- and
            # service-keyed), so two processors can refresh it at once: serialize on
            # the service, in one global order, before reading what feeds it.
            if self.attribution is not None:
                await self.attribution.lock(conn)  # first: it can touch other services
            for lock in sorted({_lock_key(s) for s in services}):
                await cur.execute("select pg_advisory_xact_lock(%s)", (lock,))
            await cur.execute(
                "select distinct service, repo from deployments where service = any(%s)",
                (sorted(services),),
            )
            for service, repo in await cur.fetchall():
                feeds[service].add(repo)
        previous: list[str] = []
        if self.attribution is not None:
            async with conn.cursor() as cur:
                await cur.execute(
                    """select deployment_id from incidents
                       where service = any(%s) and deployment_id is not null""",
                    (sorted(services),),
                )
                previous = [d for (d,) in await cur.fetchall()]
        # One service at a time: memory holds one service's history, not all of them.
        for service in sorted(services):
            history = await self._history(conn, feeds[service], service)
            await replace_rows(conn, [service], [fold_service(service, history, self.config)])
        if self.attribution is not None:
            await self.attribution.reattribute(
                conn, sorted(services), rewritten=sorted(services), previous_targets=previous
            )

    async def _history(
        self, conn: AsyncConnection[Any], repos: Iterable[str], service: str
    ) -> list[DoraEvent]:
        """The service's incidents and every event of the repositories deploying into it."""
        wanted = sorted({REPO + r for r in repos} | {SERVICE + service})
        async with conn.cursor() as cur:
            await cur.execute(
                "select payload::text from events where projection = %s and entity = any(%s)",
                (self.name, wanted),
            )
            return [parse_event_json(p) for (p,) in await cur.fetchall()]  # type: ignore[misc]


async def replace_rows(
    conn: AsyncConnection[Any], services: list[str], projections: Iterable[ServiceProjection]
) -> None:
    deployments: list[DeploymentRow] = []
    changes: list[ChangeRow] = []
    incidents: list[IncidentRow] = []
    for p in projections:
        deployments.extend(p.deployments)
        changes.extend(p.changes)
        incidents.extend(p.incidents)
    production = [
        _PRODUCTION_ROW(d) for d in deployments if d.is_production and d.finished_at is not None
    ]
    deployment_ids = [d.deployment_id for d in deployments]
    incident_ids = [i.incident_id for i in incidents]
    async with conn.cursor() as cur:
        for table, key, ids in (
            ("deployments", "deployment_id", deployment_ids),
            ("production_deployments", "deployment_id", deployment_ids),
            ("deployment_changes", None, []),
            ("incidents", "incident_id", incident_ids),
        ):
            by_key = f" or {key} = any(%(ids)s)" if key else ""
            await cur.execute(
                f"delete from {table} where service = any(%(services)s){by_key}",
                {"services": services, "ids": ids},
            )
        production_types = dict(zip(*pg_types(DeploymentRow), strict=True))
        for table, (columns, types), rows in (
            ("deployments", pg_types(DeploymentRow), [_row(d) for d in deployments]),
            (
                "production_deployments",
                (_PRODUCTION_COLUMNS, [production_types[c] for c in _PRODUCTION_COLUMNS]),
                production,
            ),
            ("deployment_changes", pg_types(ChangeRow), [_row(c) for c in changes]),
            ("incidents", pg_types(IncidentRow), [_row(i) for i in incidents]),
        ):
            if rows:
                await copy_rows(cur, table, columns, types, rows)
