"""SQL adapters of the service catalog, the dependency graph and cross-service
incident attribution (rules: :mod:`processor.services_graph`, ``docs/services.md``).

- :class:`ServicesProjection` folds ``service.declared`` (entity
  ``declared:<service>``, the latest declaration wins) into ``services`` and
  ``service_edge.observed`` (entity ``edge:<client>-><server>``) into
  ``service_edges``: first/last seen are the min/max observation time, so any
  order and any duplication give the same row; ``stale`` is then re-marked for
  every edge against the graph's latest observation.
- :class:`IncidentAttribution` is the step after a DORA refresh or an edge
  change: it re-attributes the window-attributed incidents whose candidates may
  have moved — those of the refreshed services and of every service depending
  on them within the depth — from the stored ``deployments`` and
  ``service_edges`` rows, writes ``deployment_id``/``attribution``/
  ``service_path``, and re-derives the ``incident`` failure of every deployment
  whose blame may have changed. Deployments keep their own ``status`` and
  ``rollback`` reasons, which come first.

An incident's attribution can change rows of services other than the one being
refreshed, so with dependency attribution on, every refresh that can move one
takes a single transaction-scoped lock first (DORA refreshes of different
processors take turns), before any per-service lock: one global order, no
deadlock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from psycopg import AsyncConnection

from processor.services_graph import (
    Candidate,
    Edge,
    attribute,
    dependencies,
    dependents,
)
from schemas.events import CanonicalEvent, ServiceDeclared, ServiceEdgeObserved, parse_event

DECLARED, EDGE = "declared:", "edge:"
_EXPLICIT = ("explicit_sha", "explicit_url")
_ATTRIBUTION_LOCK = int.from_bytes(
    hashlib.sha256(b"flowmetrics.attribution").digest()[:8], "big", signed=True
)
_EDGE_COLUMNS = "client, server, first_seen, last_seen, connection_type, asynchronous"


class IncidentAttribution:
    """Attribution through the dependency graph; ``depth = 0`` is the same-service rule."""

    def __init__(self, *, window: timedelta, depth: int, stale_after: timedelta) -> None:
        if depth < 0:
            raise ValueError("attribution depth must be 0 or more")
        self.window, self.depth, self.stale_after = window, depth, stale_after

    async def lock(self, conn: AsyncConnection[Any]) -> None:
        """Taken before any per-service lock when attribution crosses services."""
        if self.depth > 0:
            await conn.execute("select pg_advisory_xact_lock(%s)", (_ATTRIBUTION_LOCK,))

    async def reattribute(
        self,
        conn: AsyncConnection[Any],
        services: Iterable[str],
        *,
        rewritten: Sequence[str] = (),
        previous_targets: Iterable[str] = (),
        opened_between: tuple[datetime, datetime] | None = None,
    ) -> None:
        """Re-attribute the incidents ``services`` (and their dependents) can move;
        ``rewritten``: services whose deployment rows were just replaced;
        ``opened_between``: only incidents opened then can change."""
        async with conn.cursor() as cur:
            edges = await load_edges(conn) if self.depth > 0 else []
            affected = dependents(edges, services, self.depth)
            query = """select incident_id, service, opened_at, root_cause_sha, deployment_url,
                              deployment_id, attribution, service_path
                       from incidents where service = any(%(services)s)"""
            params: dict[str, Any] = {"services": sorted(affected)}
            if opened_between is not None:
                query += " and opened_at between %(lo)s and %(hi)s"
                params["lo"], params["hi"] = opened_between
            await cur.execute(query, params)
            incidents = await cur.fetchall()
            candidates = await self._candidates(cur, edges, incidents)
            targets = set(previous_targets)
            updates = []
            for incident_id, service, opened_at, sha, url, old_id, old_how, old_path in incidents:
                if sha or url:  # an explicit link, found (or not) by the fold
                    new = (old_id, old_how, [service] if old_id else None)
                else:
                    chosen = attribute(
                        service, opened_at, candidates, edges, depth=self.depth,
                        window=self.window, stale_after=self.stale_after,
                    )
                    new = ((chosen.deployment_id, "window", list(chosen.path)) if chosen
                           else (None, None, None))
                if new != (old_id, old_how, old_path):
                    updates.append((*new, incident_id))
                    targets |= {t for t in (old_id, new[0]) if t}
            if updates:
                await cur.executemany(
                    """update incidents set deployment_id = %s, attribution = %s,
                              service_path = %s where incident_id = %s""",
                    updates,
                )
            if targets or rewritten:
                await _mark_incident_failures(cur, sorted(targets), list(rewritten))

    async def _candidates(
        self, cur: Any, edges: Sequence[Edge], incidents: Sequence[tuple[Any, ...]]
    ) -> list[Candidate]:
        windowed = [(service, opened) for _, service, opened, sha, url, *_ in incidents
                    if not sha and not url]
        if not windowed:
            return []
        reach = {s for s, _ in windowed}
        for s in {s for s, _ in windowed}:
            reach |= {d.service for d in dependencies(edges, s, self.depth)}
        await cur.execute(
            """select deployment_id, service, finished_at, started_at from deployments
               where is_production and succeeded and finished_at is not null
                 and service = any(%s) and finished_at between %s and %s""",
            (sorted(reach), min(o for _, o in windowed) - self.window,
             max(o for _, o in windowed)),
        )
        return [Candidate(*row) for row in await cur.fetchall()]


async def _mark_incident_failures(cur: Any, ids: list[str], services: list[str]) -> None:
    """``failed``/``failure_reason`` of these deployments from the incidents table:
    ``status`` and ``rollback`` stay (they come first), else ``incident`` when one
    is attributed to it, else not failed."""
    for table in ("deployments", "production_deployments"):
        await cur.execute(
            f"""update {table} d set
                  failure_reason = case
                    when d.failure_reason in ('status', 'rollback') then d.failure_reason
                    when exists (select 1 from incidents i
                                 where i.deployment_id = d.deployment_id) then 'incident'
                  end,
                  failed = coalesce(d.failure_reason in ('status', 'rollback'), false)
                    or exists (select 1 from incidents i where i.deployment_id = d.deployment_id)
                where d.deployment_id = any(%s) or d.service = any(%s)""",
            (ids, services),
        )


async def load_edges(conn: AsyncConnection[Any]) -> list[Edge]:
    async with conn.cursor() as cur:
        await cur.execute(f"select {_EDGE_COLUMNS} from service_edges")
        return [Edge(*row) for row in await cur.fetchall()]


class ServicesProjection:
    name = "services"
    event_types = frozenset({"service.declared", "service_edge.observed"})

    def __init__(self, attribution: IncidentAttribution, stale_after: timedelta) -> None:
        self.attribution = attribution
        self.stale_after = stale_after

    def entity_of(self, event: CanonicalEvent) -> str:
        if isinstance(event, ServiceEdgeObserved):
            return f"{EDGE}{event.client}->{event.server}"
        assert isinstance(event, ServiceDeclared)
        return DECLARED + event.service

    async def refresh(
        self,
        conn: AsyncConnection[Any],
        entities: Sequence[str],
        fresh: Mapping[str, Sequence[CanonicalEvent]] | None = None,
    ) -> None:
        declared = sorted(e for e in entities if e.startswith(DECLARED))
        edges = sorted(e for e in entities if e.startswith(EDGE))
        if declared:
            await self._declare(conn, declared)
        if edges:
            await self.attribution.lock(conn)
            await self._observe(conn, edges)

    async def _declare(self, conn: AsyncConnection[Any], entities: list[str]) -> None:
        async with conn.cursor() as cur:
            await cur.execute(
                """select distinct on (entity) payload from events
                   where projection = %s and entity = any(%s)
                   order by entity, occurred_at desc, event_id desc""",
                (self.name, entities),
            )
            latest = [parse_event(p) for (p,) in await cur.fetchall()]
            rows = [(d.service, d.team, list(d.repos), list(d.jira_projects), d.description,
                     d.source, d.occurred_at) for d in latest if isinstance(d, ServiceDeclared)]
            await cur.executemany(
                """insert into services (service, team, repos, jira_projects, description,
                                         source, declared_at)
                   values (%s, %s, %s, %s, %s, %s, %s)
                   on conflict (service) do update set team = excluded.team,
                     repos = excluded.repos, jira_projects = excluded.jira_projects,
                     description = excluded.description, source = excluded.source,
                     declared_at = excluded.declared_at""",
                rows,
            )

    async def _observe(self, conn: AsyncConnection[Any], entities: list[str]) -> None:
        async with conn.cursor() as cur:
            await cur.execute(
                """select min(occurred_at), max(occurred_at),
                          (array_agg(payload order by occurred_at desc, event_id desc))[1]
                   from events where projection = %s and entity = any(%s) group by entity""",
                (self.name, entities),
            )
            folded = []
            for first, last, payload in await cur.fetchall():
                e = parse_event(payload)
                assert isinstance(e, ServiceEdgeObserved)
                folded.append(Edge(e.client, e.server, first, last, e.connection_type,
                                   e.asynchronous))
            before = {(e.client, e.server): e for e in await load_edges(conn)}
            await cur.executemany(
                f"""insert into service_edges ({_EDGE_COLUMNS}, stale)
                    values (%s, %s, %s, %s, %s, %s, false)
                    on conflict (client, server) do update set first_seen = excluded.first_seen,
                      last_seen = excluded.last_seen, connection_type = excluded.connection_type,
                      asynchronous = excluded.asynchronous""",
                [(e.client, e.server, e.first_seen, e.last_seen, e.connection_type,
                  e.asynchronous) for e in folded],
            )
            await cur.execute(
                """update service_edges set stale = last_seen < ref - %s
                   from (select max(last_seen) as ref from service_edges) r
                   where stale is distinct from (last_seen < ref - %s)""",
                (self.stale_after, self.stale_after),
            )
        moved = [(before.get((e.client, e.server)), e) for e in folded]
        spans = [span for old, new in moved for span in _newly_alive(old, new, self.stale_after)]
        if spans and self.attribution.depth > 0:  # depth 0: edges attribute nothing
            await self.attribution.reattribute(
                conn,
                sorted({new.client for old, new in moved}),
                opened_between=(min(lo for lo, _ in spans), max(hi for _, hi in spans)),
            )


def _newly_alive(
    old: Edge | None, new: Edge, stale_after: timedelta
) -> list[tuple[datetime, datetime]]:
    """When incidents may now see (or no longer see) the edge: where its alive span moved."""
    if old is None:
        return [(new.first_seen - stale_after, new.last_seen + stale_after)]
    spans = []
    if new.first_seen != old.first_seen:
        a, b = sorted((new.first_seen, old.first_seen))
        spans.append((a - stale_after, b - stale_after))
    if new.last_seen != old.last_seen:
        a, b = sorted((new.last_seen, old.last_seen))
        spans.append((a + stale_after, b + stale_after))
    return spans

