"""DORA: the four keys, and the deployments behind them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query

from api.deps import ConnDep
from api.dora_queries import DoraFilters, dora_metrics, list_deployments
from api.filters import DEFAULT_WINDOW

router = APIRouter(prefix="/api/v1", tags=["dora"])


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def get_dora_filters(
    start: Annotated[datetime | None, Query(description="Inclusive; default end - 30 days")] = None,
    end: Annotated[datetime | None, Query(description="Exclusive; default now")] = None,
    service: Annotated[str | None, Query(max_length=200)] = None,
    team: Annotated[str | None, Query(max_length=200)] = None,
    project: Annotated[
        str | None, Query(max_length=200, description="Repository (owner/name)")
    ] = None,
) -> DoraFilters:
    end_ = _aware(end) or datetime.now(UTC)
    start_ = _aware(start) or end_ - DEFAULT_WINDOW
    if start_ >= end_:
        raise HTTPException(422, "start must be before end")
    return DoraFilters(start=start_, end=end_, service=service, team=team, repo=project)


DoraFiltersDep = Annotated[DoraFilters, Depends(get_dora_filters)]


@router.get("/dora", summary="The four DORA keys over [start, end)")
async def dora(conn: ConnDep, f: DoraFiltersDep) -> dict[str, Any]:
    return await dora_metrics(conn, f)


@router.get(
    "/deployments",
    summary="Deployments, newest first, with the commits they shipped and their incidents",
)
async def deployments(
    conn: ConnDep,
    f: DoraFiltersDep,
    environment: Annotated[str | None, Query(max_length=200)] = None,
    production: Annotated[bool | None, Query(description="Only (non-)production")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> dict[str, Any]:
    return await list_deployments(
        conn, f, environment=environment, production=production, limit=limit, offset=offset
    )
