"""Flow analytics: CFD, aging WIP, cycle-time scatter, time in stage, forecasts.

Every endpoint takes the filters of ``/api/v1/metrics`` (team, project, type,
start, end). Aging WIP and the forecast read ``[start, end)`` as their lookback
(default: the 90 days before ``end``) and answer as of ``end`` (default now).
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query

from api.analytics_queries import (
    aging_wip,
    cumulative_flow,
    cycle_time_scatter,
    daily_throughput,
    days_covering,
    time_in_stage,
    utc_day,
)
from api.deps import ConnDep, StateDep
from api.filters import Filters, FiltersDep, get_filters
from processor.forecast import (
    DEFAULT_HORIZON_DAYS,
    DEFAULT_TRIALS,
    ForecastError,
    forecast_how_many,
    forecast_when,
)

router = APIRouter(prefix="/api/v1/flow", tags=["flow analytics"])

DEFAULT_LOOKBACK = timedelta(days=90)
MAX_WINDOW_DAYS = 3 * 366


def get_lookback_filters(
    start: Annotated[
        datetime | None, Query(description="Lookback start, inclusive; default end - 90 days")
    ] = None,
    end: Annotated[datetime | None, Query(description="As of; default now")] = None,
    team: Annotated[str | None, Query(max_length=200)] = None,
    project: Annotated[str | None, Query(max_length=200)] = None,
    type: Annotated[str | None, Query(max_length=200, description="Work item type")] = None,
) -> Filters:
    if start is None:
        start = (end or datetime.now(UTC)) - DEFAULT_LOOKBACK
    return get_filters(start, end, team, project, type)


LookbackDep = Annotated[Filters, Depends(get_lookback_filters)]
Limit = Annotated[int, Query(ge=1, le=100_000, description="Most items listed")]


def _bounded(f: Filters) -> Filters:
    if (f.end - f.start).days > MAX_WINDOW_DAYS:
        raise HTTPException(422, "the date range covers at most three years")
    return f


@router.get("/cfd", summary="Cumulative flow: per UTC day, items in or past each stage")
async def cfd(conn: ConnDep, state: StateDep, f: FiltersDep) -> dict[str, Any]:
    return await cumulative_flow(conn, _bounded(f), state.stages.stages)


@router.get(
    "/aging-wip",
    summary="Items in progress with their age against the team's cycle-time percentiles",
)
async def aging(conn: ConnDep, f: LookbackDep) -> dict[str, Any]:
    return await aging_wip(conn, f)


@router.get(
    "/cycle-time-scatter", summary="Completed items with cycle time, and the percentile lines"
)
async def scatter(conn: ConnDep, f: FiltersDep, limit: Limit = 10_000) -> dict[str, Any]:
    return await cycle_time_scatter(conn, f, limit)


@router.get(
    "/time-in-stage", summary="Time per stage (mean/p50/p85) and flow efficiency of completed items"
)
async def stage_times(
    conn: ConnDep, state: StateDep, f: FiltersDep, limit: Limit = 10_000
) -> dict[str, Any]:
    return await time_in_stage(conn, f, state.stages.stages, limit)


@router.get(
    "/forecast",
    summary="Monte Carlo forecast: when N items will be done (items=N) or how many by a date "
    "(until=DATE)",
)
async def forecast(
    conn: ConnDep,
    f: LookbackDep,
    items: Annotated[int | None, Query(ge=1, le=100_000, description="When will N be done")] = None,
    until: Annotated[date | None, Query(description="How many by this UTC day (inclusive)")] = None,
    trials: Annotated[int, Query(ge=100, le=100_000)] = DEFAULT_TRIALS,
    seed: Annotated[int | None, Query(ge=0, le=2**63 - 1, description="For a reproducible answer")]
    = None,
) -> dict[str, Any]:
    if (items is None) == (until is None):
        raise HTTPException(422, "give exactly one of items (when) or until (how many)")
    f = _bounded(f)
    first, _ = days_covering(f)
    begins = utc_day(f.end)  # day 1 of every trial
    if first >= begins:
        raise HTTPException(422, "the lookback must cover at least one whole day before end")
    history = await daily_throughput(conn, f, first, begins)
    seed = secrets.randbits(63) if seed is None else seed
    sampled = {
        "from": first.isoformat(),
        "to": (begins - timedelta(days=1)).isoformat(),
        "days": len(history),
        "completed": sum(history),
        "per_day_mean": round(sum(history) / len(history), 4),
    }
    common = {"begins": begins.isoformat(), "trials": trials, "seed": seed, "history": sampled}
    try:
        if items is not None:
            when = await asyncio.to_thread(
                forecast_when, history, items, seed=seed, trials=trials
            )
            return {
                "question": "when",
                "items": items,
                **common,
                "answers": [
                    {"confidence": c, "days": d,
                     "date": None if d is None else (begins + timedelta(days=d - 1)).isoformat()}
                    for c, d in when.days.items()
                ],
                "beyond_horizon": when.beyond_horizon,
                "horizon_days": when.horizon_days,
                "histogram": [
                    {"days": b.value, "date": (begins + timedelta(days=b.value - 1)).isoformat(),
                     "trials": b.trials}
                    for b in when.histogram
                ],
            }
        assert until is not None
        days = (until - begins).days + 1
        if days < 1:
            raise HTTPException(422, f"until must be on or after {begins.isoformat()}")
        if days > DEFAULT_HORIZON_DAYS:
            raise HTTPException(422, f"until is more than {DEFAULT_HORIZON_DAYS} days ahead")
        many = await asyncio.to_thread(
            forecast_how_many, history, days, seed=seed, trials=trials
        )
    except ForecastError as exc:
        raise HTTPException(422, str(exc)) from None
    return {
        "question": "how_many",
        "until": until.isoformat(),
        "days": days,
        **common,
        "answers": [{"confidence": c, "items": n} for c, n in many.items.items()],
        "histogram": [{"items": b.value, "trials": b.trials} for b in many.histogram],
    }
