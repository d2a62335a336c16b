"""Queries behind the DORA keys and the deployment list (definitions: ``docs/dora.md``).

Each key has its own population, all over ``[start, end)``:

- deployment frequency: successful production deployments finished in range;
- lead time for changes: commits whose first successful production deployment
  finished in range (merge/squash commits standing for a PR's commits excluded);
- change failure rate: production deployments finished in range (succeeded or
  failed), the failed ones over all of them;
- time to restore: incidents opened in range and resolved.

Percentiles are exact with linear interpolation (``percentile_cont``), in hours
rounded to 4 decimals, null when the set is empty.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

SECONDS_PER_HOUR = 3600.0
SECONDS_PER_DAY = 86400.0


@dataclass(frozen=True)
class DoraFilters:
    start: datetime
    end: datetime
    service: str | None = None
    team: str | None = None
    repo: str | None = None

    def where(self, alias: str = "") -> tuple[str, dict[str, Any]]:
        """Conditions on service/team/repository (not on time)."""
        p = f"{alias}." if alias else ""
        clauses: list[str] = []
        params: dict[str, Any] = {"start": self.start, "end": self.end}
        for column, value in (("service", self.service), ("team", self.team),
                              ("repo", self.repo)):
            if value is not None:
                clauses.append(f"{p}{column} = %({column})s")
                params[column] = value
        return (" and ".join(clauses) or "true"), params


def _hours(value: Any) -> float | None:
    return None if value is None else round(float(value) / SECONDS_PER_HOUR, 4)


def _percentiles(column: str) -> str:
    return (f"percentile_cont(0.5) within group (order by {column}) as p50, "
            f"percentile_cont(0.85) within group (order by {column}) as p85")


def frequency_band(deploy_days: Iterable[date], start: datetime, end: datetime) -> str | None:
    """Four Keys' band over the UTC days of ``[start, end)``, grouped in ISO weeks.

    Per week: the days with a deployment and whether there was one; per week,
    also how many weeks of its month (the month of its Monday) had one.
    ``daily`` if the median of deployment days per week is ≥ 3, ``weekly`` if
    the median week had a deployment, ``monthly`` if the median week's month
    had one, else ``yearly``; ``None`` without any deployment.
    """
    days = set(deploy_days)
    if not days:
        return None
    first = start.astimezone(UTC).date()
    last = (end - timedelta(microseconds=1)).astimezone(UTC).date()
    weeks: dict[date, int] = {}
    day = first
    while day <= last:
        monday = day - timedelta(days=day.weekday())
        weeks[monday] = weeks.get(monday, 0) + (day in days)
        day += timedelta(days=1)
    deployed_weeks: dict[tuple[int, int], int] = defaultdict(int)
    for monday, count in weeks.items():
        deployed_weeks[(monday.year, monday.month)] += count > 0
    if statistics.median(weeks.values()) >= 3:
        return "daily"
    if statistics.median(int(c > 0) for c in weeks.values()) >= 1:
        return "weekly"
    if statistics.median(deployed_weeks[(m.year, m.month)] for m in weeks) >= 1:
        return "monthly"
    return "yearly"


async def dora_metrics(conn: AsyncConnection[Any], f: DoraFilters) -> dict[str, Any]:
    where, params = f.where()
    in_range = "%(start)s <= {0} and {0} < %(end)s and " + where
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"""select count(*) filter (where succeeded) as successful,
                       count(*) as finished,
                       count(*) filter (where failed) as failed
                from production_deployments where {in_range.format("finished_at")}""",
            params,
        )
        counts = await cur.fetchone()
        await cur.execute(
            f"""select distinct (finished_at at time zone 'UTC')::date as day
                from production_deployments
                where succeeded and {in_range.format("finished_at")}""",
            params,
        )
        days = [r["day"] for r in await cur.fetchall()]
        await cur.execute(
            f"""select {_percentiles("lead_time_s")} from deployment_changes
                where lead_time_s is not null and {in_range.format("deployed_at")}""",
            params,
        )
        lead = await cur.fetchone()
        await cur.execute(
            f"""select {_percentiles("time_to_restore_s")} from incidents
                where resolved_at is not null and {in_range.format("opened_at")}""",
            params,
        )
        restore = await cur.fetchone()
        # The incidents behind CFR's "incident" failures, with the service path each took.
        await cur.execute(
            f"""select i.incident_id, i.service, i.opened_at, i.attribution, i.service_path,
                       p.deployment_id, p.service as deployment_service
                from incidents i join production_deployments p using (deployment_id)
                where %(start)s <= p.finished_at and p.finished_at < %(end)s
                  and {f.where("p")[0]}
                order by i.opened_at, i.incident_id""",
            params,
        )
        attributed = [_jsonable(r) for r in await cur.fetchall()]
    assert counts is not None and lead is not None and restore is not None
    span_days = (f.end - f.start).total_seconds() / SECONDS_PER_DAY
    successful, finished, failed = (int(counts[k]) for k in ("successful", "finished", "failed"))
    per_day = successful / span_days
    return {
        "start": f.start.isoformat(),
        "end": f.end.isoformat(),
        "deployment_frequency": {
            "per_day": round(per_day, 4),
            "per_week": round(per_day * 7, 4),
            "band": frequency_band(days, f.start, f.end),
        },
        "lead_time_for_changes_hours": {"p50": _hours(lead["p50"]), "p85": _hours(lead["p85"])},
        "change_failure_rate": round(failed / finished, 4) if finished else None,
        "time_to_restore_hours": {"p50": _hours(restore["p50"]), "p85": _hours(restore["p85"])},
        "deployments": finished,
        "failed_deployments": failed,
        "attributed_incidents": attributed,
    }


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


_DEPLOYMENT_COLUMNS = (
    "deployment_id, service, repo, team, environment, is_production, sha, status, succeeded, "
    "started_at, finished_at, url, rollback_of, rolled_back_by, failed, failure_reason"
)


async def list_deployments(
    conn: AsyncConnection[Any],
    f: DoraFilters,
    *,
    environment: str | None,
    production: bool | None,
    limit: int,
    offset: int,
) -> dict[str, Any]:
    """Deployments that finished (or, still running, started) in range, newest first,
    each with the commits it shipped first and the incidents attributed to it."""
    where, params = f.where()
    clauses = [where, "%(start)s <= coalesce(finished_at, started_at)",
               "coalesce(finished_at, started_at) < %(end)s"]
    if environment is not None:
        clauses.append("environment = %(environment)s")
        params["environment"] = environment
    if production is not None:
        clauses.append("is_production = %(production)s")
        params["production"] = production
    condition = " and ".join(clauses)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"select count(*) as n from deployments where {condition}", params)
        total = await cur.fetchone()
        await cur.execute(
            f"""select {_DEPLOYMENT_COLUMNS} from deployments where {condition}
                order by coalesce(finished_at, started_at) desc, deployment_id
                limit %(limit)s offset %(offset)s""",
            {**params, "limit": limit, "offset": offset},
        )
        items = [_jsonable(r) for r in await cur.fetchall()]
        ids = [i["deployment_id"] for i in items]
        await cur.execute(
            """select deployment_id, sha, committed_at, lead_time_s, pull_request, kind
               from deployment_changes where deployment_id = any(%s)
               order by committed_at, sha""",
            (ids,),
        )
        changes: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in await cur.fetchall():
            lead = r.pop("lead_time_s")
            row = {**_jsonable(r), "lead_time_hours": _hours(lead)}
            changes[row.pop("deployment_id")].append(row)
        await cur.execute(
            """select deployment_id, incident_id, service, title, opened_at, resolved_at,
                      attribution, service_path
               from incidents where deployment_id = any(%s) order by opened_at, incident_id""",
            (ids,),
        )
        incidents: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in await cur.fetchall():
            incidents[r.pop("deployment_id")].append(_jsonable(r))
    for item in items:
        item["changes"] = changes.get(item["deployment_id"], [])
        item["incidents"] = incidents.get(item["deployment_id"], [])
    return {"total": int(total["n"]) if total else 0, "limit": limit, "offset": offset,
            "items": items}
