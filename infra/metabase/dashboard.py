"""The flowmetrics Metabase dashboard: its cards (native SQL over the ``analytics``
schema only, ``docs/analytics.md``) and their place on the grid.

Every card takes the dashboard's optional ``team`` filter through a Metabase
template tag: ``[[ ... {{team}} ... ]]`` is dropped when no team is chosen.
Metabase's grid is 24 columns wide.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DASHBOARD_NAME = "Flow and delivery (flowmetrics)"
DASHBOARD_DESCRIPTION = (
    "Throughput, cycle time, cumulative flow, aging work in progress and the DORA keys. "
    "Provisioned by infra/metabase/provision.py; edits here are overwritten on re-provisioning."
)
COLLECTION_NAME = "flowmetrics"
TEAM_TAG = "team"


@dataclass(frozen=True)
class Card:
    name: str
    description: str
    display: str  # Metabase display type: bar, line, area, scatter, table
    sql: str
    row: int
    col: int
    size_x: int
    size_y: int
    visualization: dict[str, Any] = field(default_factory=dict)


def _series(x: str | list[str], *metrics: str, **extra: Any) -> dict[str, Any]:
    return {
        "graph.dimensions": x if isinstance(x, list) else [x],
        "graph.metrics": list(metrics),
        **extra,
    }


CARDS: tuple[Card, ...] = (
    Card(
        name="Throughput per week",
        description="Items completed per ISO week (UTC), last 26 weeks.",
        display="bar",
        sql="""
select date_trunc('week', t.day)::date as week, sum(t.items) as items
from analytics.daily_throughput t
where t.day >= current_date - 182
  [[and t.team = {{team}}]]
group by 1
order by 1
""",
        row=0, col=0, size_x=12, size_y=6,
        visualization=_series("week", "items"),
    ),
    Card(
        name="Cycle time scatter with percentiles",
        description="Items completed in the last 90 days; p50/p85/p95 as flat series.",
        display="scatter",
        sql="""
with c as (
  select c.display_key, c.completed_at, c.cycle_time_hours
  from analytics.completions c
  where c.completed_at >= now() - interval '90 days'
    [[and c.team = {{team}}]]
)
select c.completed_at, c.cycle_time_hours, p.p50, p.p85, p.p95
from c cross join (
  select percentile_cont(0.5) within group (order by cycle_time_hours) as p50,
         percentile_cont(0.85) within group (order by cycle_time_hours) as p85,
         percentile_cont(0.95) within group (order by cycle_time_hours) as p95
  from c) p
order by c.completed_at
""",
        row=0, col=12, size_x=12, size_y=6,
        visualization=_series("completed_at", "cycle_time_hours", "p50", "p85", "p95"),
    ),
    Card(
        name="Cumulative flow (last 90 days)",
        description="Per day, items that reached each stage or a later one.",
        display="area",
        sql="""
select f.day, f.stage, f.items
from analytics.cfd(current_date - 89, current_date + 1 [[, {{team}}]]) f
order by f.day, f.stage_index
""",
        row=6, col=0, size_x=12, size_y=7,
        visualization=_series(["day", "stage"], "items", **{"stackable.stack_type": None}),
    ),
    Card(
        name="Aging work in progress",
        description="Items in progress, oldest first, against the team's 90-day percentiles.",
        display="table",
        sql="""
select w.display_key, w.team, w.stage, round(w.age_hours::numeric, 1) as age_hours,
       w.flag, round(w.p85_hours::numeric, 1) as p85_hours,
       round(w.p95_hours::numeric, 1) as p95_hours
from analytics.aging_wip w
where true
  [[and w.team = {{team}}]]
order by w.age_hours desc
""",
        row=6, col=12, size_x=12, size_y=7,
    ),
    Card(
        name="DORA: deployments and change failure rate per week",
        description="Successful production deployments per week and the share that failed.",
        display="bar",
        sql="""
select d.week, sum(d.deployments) as deployments,
       sum(d.failed_deployments)::double precision
         / nullif(sum(d.finished_deployments), 0) as change_failure_rate
from analytics.dora_weekly d
where d.week >= current_date - 182
  [[and d.team = {{team}}]]
group by d.week
order by d.week
""",
        row=13, col=0, size_x=12, size_y=6,
        visualization=_series("week", "deployments", "change_failure_rate"),
    ),
    Card(
        name="DORA: lead time and time to restore per week",
        description="Median and p85 hours per week: commit to production, incident to restore.",
        display="line",
        sql="""
with lead as (
  select date_trunc('week', c.deployed_at at time zone 'UTC')::date as week,
         percentile_cont(0.5) within group (order by c.lead_time_hours) as p50,
         percentile_cont(0.85) within group (order by c.lead_time_hours) as p85
  from analytics.deployment_changes c
  where c.deployed_at >= current_date - 182 and c.lead_time_hours is not null
    [[and c.team = {{team}}]]
  group by 1
), restore as (
  select date_trunc('week', i.opened_at at time zone 'UTC')::date as week,
         percentile_cont(0.5) within group (order by i.time_to_restore_hours) as p50
  from analytics.incidents i
  where i.opened_at >= current_date - 182 and i.time_to_restore_hours is not null
    [[and i.team = {{team}}]]
  group by 1
)
select coalesce(l.week, r.week) as week, l.p50 as lead_time_p50_hours,
       l.p85 as lead_time_p85_hours, r.p50 as time_to_restore_p50_hours
from lead l full join restore r on r.week = l.week
order by 1
""",
        row=13, col=12, size_x=12, size_y=6,
        visualization=_series("week", "lead_time_p50_hours", "lead_time_p85_hours",
                              "time_to_restore_p50_hours"),
    ),
)


def template_tags() -> dict[str, Any]:
    """The ``team`` tag every card declares (the id is stable so re-provisioning is a no-op)."""
    return {
        TEAM_TAG: {
            "id": "flowmetrics-team",
            "name": TEAM_TAG,
            "display-name": "Team",
            "type": "text",
            "required": False,
        }
    }


def dashboard_parameters() -> list[dict[str, Any]]:
    return [{"id": TEAM_TAG, "name": "Team", "slug": TEAM_TAG, "type": "string/="}]
