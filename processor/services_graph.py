"""The service dependency graph: pure rules, no I/O.

- :func:`edges_from_vector`: a Prometheus ``/api/v1/query`` answer for
  ``traces_service_graph_request_total{client, server, connection_type}`` →
  one :class:`~schemas.events.ServiceEdgeObserved` per client → server pair.
  Self-loops and series missing ``client`` or ``server`` are dropped; a pair is
  asynchronous when every series of it says ``messaging``.
- :class:`Edge`: what the store keeps per pair (first/last seen). *Stale*
  (the ``stale`` column, ``/services`` answers) is relative to a reference time,
  the latest observation of any edge, never the clock: the graph's own last
  scrape. So a scraper outage ages nothing, and the flag depends only on the
  stored events, not on when they were folded.
- :func:`dependencies`: transitive dependencies up to a depth, shortest path first.
- :func:`attribute`: which deployment an incident goes to through the graph.
  An edge is usable for an incident at ``t`` when it was *alive at t*: observed
  within ``stale_after`` of ``t`` (``first_seen - stale_after <= t <=
  last_seen + stale_after``). Judging each incident by the graph of its own
  time keeps past incidents where they were when an edge is retired later,
  and makes the result independent of the order the events arrive in.
  (``docs/services.md`` has the rule and an example.)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.events import ServiceEdgeObserved, stable_event_id

METRIC = "traces_service_graph_request_total"


class PrometheusAnswerError(ValueError):
    """Prometheus answered, but not with a vector of the service-graph metric."""


# --- edges from Prometheus --------------------------------------------------------------


def edge_event_id(client: str, server: str, observed_at: datetime, resolution: timedelta) -> str:
    """One stored observation per pair and ``resolution`` slot: re-scrapes in the slot
    fold once (the events table keeps the first), so history grows by slots, not scrapes."""
    slot = int(observed_at.timestamp() // resolution.total_seconds())
    return stable_event_id("service_edge", client, server, slot)


def edges_from_vector(
    answer: Mapping[str, Any],
    *,
    received_at: datetime,
    resolution: timedelta = timedelta(hours=1),
    source: str = "prometheus",
) -> list[ServiceEdgeObserved]:
    """Edge events from a Prometheus query answer (``{"status": "success", "data":
    {"resultType": "vector", "result": [...]}}``). A sample's timestamp is when the
    edge was seen (Prometheus' evaluation time), not when we read it."""
    if answer.get("status") != "success":
        raise PrometheusAnswerError(
            f"status {answer.get('status')!r}: {answer.get('errorType')} {answer.get('error')}"
        )
    data = answer.get("data")
    if not isinstance(data, Mapping) or data.get("resultType") != "vector":
        raise PrometheusAnswerError("expected data.resultType 'vector'")
    pairs: dict[tuple[str, str], tuple[datetime, set[str]]] = {}
    for series in data.get("result") or ():
        labels = series.get("metric") or {}
        client, server = labels.get("client") or "", labels.get("server") or ""
        if not client or not server or client == server:
            continue  # uninstrumented peer without a name, or a call to itself
        try:
            seen = datetime.fromtimestamp(float(series["value"][0]), UTC)
        except (KeyError, IndexError, TypeError, ValueError):
            seen = received_at
        kinds = {labels.get("connection_type") or ""}
        if (client, server) in pairs:
            before, known = pairs[(client, server)]
            seen, kinds = max(seen, before), known | kinds
        pairs[(client, server)] = (seen, kinds)
    return [
        ServiceEdgeObserved(
            event_id=edge_event_id(client, server, seen, resolution),
            source=source,
            occurred_at=seen,
            received_at=received_at,
            key=f"service_edge:{client}->{server}",
            client=client,
            server=server,
            connection_type=",".join(sorted(kinds)),
            asynchronous=all("messaging" in k for k in kinds),
        )
        for (client, server), (seen, kinds) in sorted(pairs.items())
    ]


# --- the stored graph ------------------------------------------------------------------


@dataclass(frozen=True)
class Edge:
    client: str
    server: str
    first_seen: datetime
    last_seen: datetime
    connection_type: str = ""
    asynchronous: bool = False

    def stale(self, reference: datetime, stale_after: timedelta) -> bool:
        """Not seen for ``stale_after`` before ``reference`` (the graph's latest observation)."""
        return self.last_seen < reference - stale_after

    def alive_at(self, t: datetime, stale_after: timedelta) -> bool:
        return self.first_seen - stale_after <= t <= self.last_seen + stale_after


def fold_edge(observations: Iterable[ServiceEdgeObserved]) -> Edge | None:
    """One pair's observations → its edge; the latest observation's labels win."""
    ordered = sorted(observations, key=lambda e: (e.occurred_at, e.event_id))
    if not ordered:
        return None
    last = ordered[-1]
    return Edge(last.client, last.server, ordered[0].occurred_at, last.occurred_at,
                last.connection_type, last.asynchronous)


def reference_time(edges: Iterable[Edge]) -> datetime | None:
    return max((e.last_seen for e in edges), default=None)


@dataclass(frozen=True)
class Dependency:
    service: str
    depth: int
    path: tuple[str, ...]  # from the asking service to ``service``, both included
    edge: Edge  # the last hop


def dependencies(
    edges: Iterable[Edge], service: str, depth: int, *,
    usable: Callable[[Edge], bool] | None = None,
) -> list[Dependency]:
    """What ``service`` depends on, transitively, up to ``depth`` hops, each once by
    its shortest path (ties: the alphabetically first path). ``usable(edge)`` filters
    the edges (default: all)."""
    out: dict[str, list[Edge]] = {}
    for e in edges:
        if usable is None or usable(e):
            out.setdefault(e.client, []).append(e)
    found: dict[str, Dependency] = {}
    queue: deque[tuple[str, tuple[str, ...]]] = deque([(service, (service,))])
    while queue:
        here, path = queue.popleft()
        if len(path) > depth:
            continue
        for e in sorted(out.get(here, ()), key=lambda e: e.server):
            if e.server == service or e.server in found:
                continue
            found[e.server] = Dependency(e.server, len(path), (*path, e.server), e)
            queue.append((e.server, (*path, e.server)))
    return sorted(found.values(), key=lambda d: (d.depth, d.path))


def dependents(edges: Iterable[Edge], services: Iterable[str], depth: int) -> set[str]:
    """``services`` and every service that reaches one of them in at most ``depth``
    hops over any edge (stale or not): whose attribution a change there can move."""
    into: dict[str, set[str]] = {}
    for e in edges:
        into.setdefault(e.server, set()).add(e.client)
    reached = set(services)
    frontier = set(reached)
    for _ in range(depth):
        frontier = {c for s in frontier for c in into.get(s, ())} - reached
        reached |= frontier
    return reached


# --- attribution -----------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A successful production deployment an incident could be attributed to."""

    deployment_id: str
    service: str
    finished_at: datetime
    started_at: datetime


@dataclass(frozen=True)
class Attribution:
    deployment_id: str
    path: tuple[str, ...]  # incident's service → ... → the deployment's service


def attribute(
    service: str,
    opened_at: datetime,
    candidates: Iterable[Candidate],
    edges: Sequence[Edge],
    *,
    depth: int,
    window: timedelta,
    stale_after: timedelta,
) -> Attribution | None:
    """The latest successful production deployment finished in ``[opened_at - window,
    opened_at]`` of ``service`` or of a service it depends on through edges alive at
    ``opened_at``, at most ``depth`` hops away. Ties on the finish time go to the
    shorter path, then to the later start, then to the larger id (the same-service
    rule's order). ``depth = 0`` is the same-service rule."""
    paths: dict[str, tuple[str, ...]] = {service: (service,)}
    for d in dependencies(edges, service, depth,
                          usable=lambda e: e.alive_at(opened_at, stale_after)):
        paths[d.service] = d.path
    best: tuple[Any, ...] | None = None
    chosen: Attribution | None = None
    for c in candidates:
        path = paths.get(c.service)
        if path is None or not opened_at - window <= c.finished_at <= opened_at:
            continue
        rank = (c.finished_at, -len(path), c.started_at, c.deployment_id)
        if best is None or rank > best:
            best, chosen = rank, Attribution(c.deployment_id, path)
    return chosen
