"""Flow metrics: the headline numbers and their time series."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from api.deps import ConnDep, StateDep
from api.filters import FiltersDep
from api.flow_queries import flow_metrics, flow_timeseries

router = APIRouter(prefix="/api/v1", tags=["flow"])


@router.get("/metrics", summary="Throughput, WIP, cycle and lead time over [start, end)")
async def metrics(state: StateDep, f: FiltersDep) -> dict[str, Any]:
    return await flow_metrics(state.pool, f)


@router.get("/metrics/timeseries", summary="Throughput and WIP per day or week")
async def timeseries(
    conn: ConnDep,
    f: FiltersDep,
    interval: Annotated[Literal["day", "week"], Query()] = "day",
) -> dict[str, Any]:
    if (f.end - f.start).days > 3 * 366:
        from fastapi import HTTPException

        raise HTTPException(422, "a time series covers at most three years")
    return {"interval": interval, "buckets": await flow_timeseries(conn, f, interval)}


@router.get("/stages", summary="The configured stages, in order, with current WIP per stage")
async def stages(conn: ConnDep, state: StateDep, team: str | None = None) -> dict[str, Any]:
    flow = state.stages.for_team(team)
    async with conn.cursor() as cur:
        await cur.execute(
            """select stage, count(*) from work_items
               where flow_state in ('backlog', 'wip')
                 and (%(team)s::text is null or team = %(team)s)
               group by stage""",
            {"team": team},
        )
        counts = {stage: int(n) for stage, n in await cur.fetchall()}
    return {
        "start_stage": flow.start_stage,
        "done_stage": flow.done_stage,
        "stages": [
            {"name": s.name, "kind": s.kind, "index": s.index, "items": counts.get(s.name, 0)}
            for s in flow.stages
        ],
    }
