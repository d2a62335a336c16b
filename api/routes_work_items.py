"""Work items: the filtered list, and one item's history with time in each stage."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from psycopg.rows import dict_row

from api.deps import ConnDep
from api.problems import problem_responses

router = APIRouter(prefix="/api/v1/work-items", tags=["work items"])

STATES: dict[str, tuple[str, ...]] = {
    "open": ("backlog", "wip"),
    "wip": ("wip",),
    "backlog": ("backlog",),
    "done": ("done",),
    "removed": ("removed",),
}

_ITEM_COLUMNS = (
    "item_id, display_key, source, title, item_type, project, team, status, stage, "
    "flow_state, created_at, started_at, completed_at, assignee, labels, url, updated_at"
)


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}


@router.get("", summary="Work items, filtered and paginated (newest activity first)")
async def list_work_items(
    conn: ConnDep,
    state: Annotated[Literal["open", "wip", "backlog", "done", "removed"] | None, Query()] = None,
    team: Annotated[str | None, Query(max_length=200)] = None,
    project: Annotated[str | None, Query(max_length=200)] = None,
    type: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> dict[str, Any]:
    clauses = ["true"]
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    if state is not None:
        clauses.append("flow_state = any(%(states)s)")
        params["states"] = list(STATES[state])
    for column, value in (("team", team), ("project", project), ("item_type", type)):
        if value is not None:
            clauses.append(f"{column} = %({column})s")
            params[column] = value
    where = " and ".join(clauses)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"select count(*) as n from work_items where {where}", params)
        total_row = await cur.fetchone()
        await cur.execute(
            f"""select {_ITEM_COLUMNS} from work_items where {where}
                order by updated_at desc, item_id limit %(limit)s offset %(offset)s""",
            params,
        )
        items = [_jsonable(r) for r in await cur.fetchall()]
    total = int(total_row["n"]) if total_row else 0
    return {"total": total, "limit": limit, "offset": offset, "items": items}


@router.get(
    "/{key}/history",
    summary="Transitions of one item, with the time spent in each stage",
    responses=problem_responses({404: "No work item has this key or id"}),
)
async def history(conn: ConnDep, key: str) -> dict[str, Any]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"select {_ITEM_COLUMNS} from work_items where display_key = %(k)s or item_id = %(k)s "
            "order by (item_id = %(k)s) desc limit 1",
            {"k": key},
        )
        item = await cur.fetchone()
        if item is None:
            raise HTTPException(404, f"no work item {key!r}")
        item_id = item["item_id"]
        await cur.execute(
            """select occurred_at, from_status, to_status, from_stage, to_stage
               from transitions where item_id = %s order by occurred_at, event_id""",
            (item_id,),
        )
        transitions = [_jsonable(r) for r in await cur.fetchall()]
        await cur.execute(
            """select stage, flow_state, entered_at, exited_at,
                      extract(epoch from (coalesce(exited_at, now()) - entered_at)) / 3600.0
                        as hours
               from stage_intervals where item_id = %s order by seq""",
            (item_id,),
        )
        intervals = [_jsonable(r) for r in await cur.fetchall()]
    time_in_stage: dict[str, float] = {}
    for interval in intervals:
        interval["hours"] = round(float(interval["hours"]), 4)
        time_in_stage[interval["stage"]] = round(
            time_in_stage.get(interval["stage"], 0.0) + interval["hours"], 4
        )
    return {
        "item": _jsonable(item),
        "transitions": transitions,
        "stays": intervals,
        "time_in_stage_hours": time_in_stage,
    }
