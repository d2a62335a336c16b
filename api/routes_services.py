"""Services: the catalog and the dependency graph (``docs/services.md``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query

from api.deps import ConnDep, StateDep
from api.problems import problem_responses
from processor.services_graph import Edge, dependencies

router = APIRouter(prefix="/api/v1", tags=["services"])

_EDGE_COLUMNS = "client, server, first_seen, last_seen, connection_type, asynchronous, stale"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


async def _edges(conn: ConnDep) -> tuple[list[Edge], set[tuple[str, str]]]:
    async with conn.cursor() as cur:
        await cur.execute(f"select {_EDGE_COLUMNS} from service_edges")
        rows = await cur.fetchall()
    return [Edge(*r[:6]) for r in rows], {(r[0], r[1]) for r in rows if r[6]}


@router.get("/services", summary="Declared services, and services seen only in the graph")
async def list_services(conn: ConnDep) -> dict[str, Any]:
    async with conn.cursor() as cur:
        await cur.execute(
            "select service, team, repos, jira_projects, description, declared_at from services"
        )
        declared = {r[0]: r for r in await cur.fetchall()}
    edges, stale = await _edges(conn)
    names = set(declared) | {e.client for e in edges} | {e.server for e in edges}
    live = [e for e in edges if (e.client, e.server) not in stale]
    items = []
    for name in sorted(names):
        row = declared.get(name)
        items.append({
            "service": name,
            "declared": row is not None,
            "team": row[1] if row else None,
            "repos": list(row[2]) if row else [],
            "jira_projects": list(row[3]) if row else [],
            "description": row[4] if row else "",
            "declared_at": _iso(row[5]) if row else None,
            "depends_on": sorted(e.server for e in live if e.client == name),
            "used_by": sorted(e.client for e in live if e.server == name),
        })
    return {"total": len(items), "items": items}


@router.get(
    "/services/{name}/dependencies",
    summary="What a service depends on, transitively, up to a depth (shortest path each)",
    responses=problem_responses({404: "No service has this name (declared or in the graph)"}),
)
async def service_dependencies(
    conn: ConnDep,
    state: StateDep,
    name: Annotated[str, Path(max_length=200)],
    depth: Annotated[int | None, Query(ge=1, le=10, description="Default: the attribution depth")]
    = None,
    include_stale: Annotated[bool, Query(description="Also walk stale edges")] = False,
) -> dict[str, Any]:
    settings = state.extra.get("settings")
    hops = depth or max(getattr(settings, "attribution_depth", 2), 1)
    edges, stale = await _edges(conn)
    async with conn.cursor() as cur:
        await cur.execute("select 1 from services where service = %s", (name,))
        known = await cur.fetchone() is not None
    if not known and not any(name in (e.client, e.server) for e in edges):
        raise HTTPException(404, f"unknown service {name!r}")
    found = dependencies(
        edges, name, hops,
        usable=None if include_stale else (lambda e: (e.client, e.server) not in stale),
    )
    return {
        "service": name,
        "depth": hops,
        "dependencies": [
            {
                "service": d.service,
                "depth": d.depth,
                "path": list(d.path),
                "connection_type": d.edge.connection_type,
                "asynchronous": d.edge.asynchronous,
                "first_seen": _iso(d.edge.first_seen),
                "last_seen": _iso(d.edge.last_seen),
                "stale": (d.edge.client, d.edge.server) in stale,
            }
            for d in found
        ],
    }
