"""API latency at scale, against the same numbers computed from the raw tables.

The data set (:mod:`bench.api_dataset`) is loaded into a fresh database; the real
API (``flowmetrics serve``, uvicorn) answers over HTTP, and a second process
(``python -m bench.api_bench client``) sends sequential requests for a 90-day
window ending at the data set's end and times each one.

"Raw" is the question answered with no derived table and no aggregate: from
``transitions`` alone (one row per status change, the closest thing to the
event log that is still relational), with window functions over every item's
history, the way one would without the processor's projections. Each raw query
is run a few times straight through psycopg (no HTTP, so the comparison
flatters the raw side) and its answer is checked against the API's.

Endpoints the build does not have yet (absent from ``/openapi.json``) are
reported as n/a with that reason.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg

from bench.api_dataset import END, load, load_dora
from bench.harness import Backends, flowmetrics_child, flowmetrics_env, percentile, python_child
from infra.embedded import free_port
from processor.stages import REMOVED_STAGE, StageConfig, load_stage_config

WINDOW = timedelta(days=90)


def stage_values(stages: StageConfig) -> str:
    flow = stages.default
    rows = [f"('{s.name}', {s.index})" for s in flow.stages] + [f"('{REMOVED_STAGE}', -1)"]
    return "(values " + ", ".join(rows) + ") as s(stage, idx)"


def _histories(stages: StageConfig, team: str | None) -> str:
    """Per transition: stage index, the stay it opens, and the item's flow state during it."""
    flow = stages.default
    start, done = flow.index(flow.start_stage), flow.index(flow.done_stage)
    team_clause = "t.team = %(team)s" if team else "true"
    return f"""
    t as (
        select t.item_id, t.event_id, t.occurred_at, s.idx
        from transitions t join {stage_values(stages)} on s.stage = t.to_stage
        where {team_clause}
    ),
    steps as (
        select item_id, occurred_at, idx,
               lag(idx) over w as prev_idx,
               lead(occurred_at) over w as left_at,
               min(occurred_at) over (partition by item_id) as created_at,
               bool_or(idx >= {start}) over (w rows unbounded preceding) as started,
               row_number() over (partition by item_id order by occurred_at desc,
                                  event_id desc) as from_end
        from t window w as (partition by item_id order by occurred_at, event_id)
    ),
    stays as (
        select item_id, occurred_at as entered_at, left_at as exited_at, idx,
               case when idx = -1 then 'removed' when idx >= {done} then 'done'
                    when started then 'wip' else 'backlog' end as flow_state
        from steps
    ),
    items as (
        select item_id, min(created_at) as created_at,
               min(occurred_at) filter (where idx >= {start}) as started_at,
               max(occurred_at) filter (where idx >= {done}
                                        and (prev_idx is null or prev_idx < {done}))
                   as completed_at,
               max(idx) filter (where from_end = 1) as current_idx
        from steps group by item_id
    ),
    completions as (
        select item_id, completed_at,
               extract(epoch from completed_at - started_at) as cycle_time_s,
               extract(epoch from completed_at - created_at) as lead_time_s
        from items where current_idx >= {done} and started_at is not null
    )"""


def raw_metrics_sql(stages: StageConfig, team: str | None) -> str:
    def stats(column: str) -> str:
        return ", ".join(
            f"percentile_cont({q}) within group (order by {column})" for q in (0.5, 0.85, 0.95)
        )

    return f"""with {_histories(stages, team)}
    select (select count(*) from completions
             where completed_at >= %(start)s and completed_at < %(end)s) as throughput,
           (select count(distinct item_id) from stays where flow_state = 'wip'
             and entered_at <= %(end)s and (exited_at is null or exited_at > %(end)s)) as wip,
           (select array[{stats("cycle_time_s")}] from completions
             where completed_at >= %(start)s and completed_at < %(end)s) as cycle_time_s"""


def raw_timeseries_sql(stages: StageConfig, team: str | None) -> str:
    return f"""with {_histories(stages, team)},
    buckets as (
        select b as bucket_start, least(b + interval '1 day', %(end)s) as bucket_end
        from generate_series(date_trunc('day', %(start)s::timestamptz, 'UTC'),
                             %(end)s::timestamptz - interval '1 microsecond',
                             interval '1 day') as b
    )
    select bucket_start,
           (select count(*) from completions c where c.completed_at >= bucket_start
              and c.completed_at < bucket_end) as throughput,
           (select count(distinct s.item_id) from stays s where s.flow_state = 'wip'
              and s.entered_at <= bucket_end
              and (s.exited_at is null or s.exited_at > bucket_end)) as wip
    from buckets order by bucket_start"""


def raw_cfd_sql(stages: StageConfig, team: str | None) -> str:
    """Per UTC day and stage: items that had reached the stage or a later one by day's end.

    Items whose latest stage is Removed are left out entirely, back to their
    creation (``docs/analytics.md``: they leave the CFD while they stay removed).
    """
    return f"""with {_histories(stages, team)},
    reached as (
        select t.item_id, s.stage, s.idx, min(t.occurred_at) as at
        from t join {stage_values(stages)} on t.idx >= s.idx and s.idx >= 0
        where t.item_id in (select item_id from items where current_idx <> -1)
        group by t.item_id, s.stage, s.idx
    ),
    per_day as (
        select stage, date_trunc('day', at, 'UTC') as day, count(*) as n
        from reached group by 1, 2
    ),
    calendar as (
        select d from generate_series(
            least((select min(day) from per_day), date_trunc('day', %(start)s::timestamptz, 'UTC')),
            %(end)s::timestamptz - interval '1 microsecond', interval '1 day') as d
    ),
    running as (
        select c.d, s.stage, s.idx,
               sum(coalesce(p.n, 0)) over (partition by s.stage order by c.d) as items
        from calendar c cross join {stage_values(stages)}
        left join per_day p on p.stage = s.stage and p.day = c.d
        where s.idx >= 0
    )
    select d, stage, items from running
    where d >= date_trunc('day', %(start)s::timestamptz, 'UTC')
    order by d, idx"""


def raw_dora_sql(stages: StageConfig, team: str | None) -> str:
    """The four keys from the row-per-deployment, row-per-commit and row-per-incident
    tables (``deployments`` of every environment, not the production projection),
    the band's deployment days included. The API reads rows of the same grain (no
    DORA aggregate exists), so this baseline measures the API's overhead, not a
    saving."""
    del stages
    team_d = "and d.team = %(team)s" if team else ""
    team_c = "and c.team = %(team)s" if team else ""
    team_i = "and i.team = %(team)s" if team else ""
    return f"""
    with prod as (
        select d.succeeded, d.failed, d.finished_at from deployments d
        where d.is_production and d.finished_at >= %(start)s and d.finished_at < %(end)s
          {team_d}
    )
    select (select count(*) from prod where succeeded) as successful,
           (select count(*) from prod) as finished,
           (select count(*) from prod where failed) as failed,
           (select count(distinct (finished_at at time zone 'UTC')::date) from prod
             where succeeded) as deploy_days,
           (select percentile_cont(0.5) within group (
                     order by extract(epoch from c.deployed_at - c.committed_at))
              from deployment_changes c
             where c.lead_time_s is not null and c.deployed_at >= %(start)s
               and c.deployed_at < %(end)s {team_c}) as lead_p50_s,
           (select percentile_cont(0.5) within group (
                     order by extract(epoch from i.resolved_at - i.opened_at))
              from incidents i
             where i.resolved_at is not null and i.opened_at >= %(start)s
               and i.opened_at < %(end)s {team_i}) as restore_p50_s"""


# -- the HTTP client (its own process) ------------------------------------------


def client_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench.api_bench client")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--plan", required=True, help="JSON: [[name, path, params], ...]")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--budget-s",
        type=float,
        default=30.0,
        help="per endpoint: stop early after this long (3 requests at least)",
    )
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    with httpx.Client(base_url=args.base_url, timeout=120) as client:
        for name, path, params in orjson.loads(args.plan):
            latencies: list[float] = []
            statuses: dict[str, int] = {}
            body: Any = None
            deadline = time.perf_counter() + args.budget_s
            for i in range(args.warmup + args.requests):
                if len(latencies) >= 3 and time.perf_counter() > deadline:
                    break
                began = time.perf_counter()
                response = client.get(path, params=params)
                elapsed = time.perf_counter() - began
                if i >= args.warmup:
                    latencies.append(elapsed * 1000)
                    key = str(response.status_code)
                    statuses[key] = statuses.get(key, 0) + 1
                body = response.json() if response.status_code == 200 else response.text
            results[name] = {"latencies_ms": latencies, "statuses": statuses, "last": body}
    sys.stdout.write(orjson.dumps(results).decode() + "\n")


# -- orchestration ----------------------------------------------------------------


def _plan(team: str | None) -> list[tuple[str, str, str, dict[str, str]]]:
    """(name, path, raw kind, params) for a 90-day window ending at the data's end."""
    params = {"start": (END - WINDOW).isoformat(), "end": END.isoformat()}
    if team:
        params["team"] = team
    return [
        ("metrics", "/api/v1/metrics", "metrics", params),
        (
            "metrics/timeseries",
            "/api/v1/metrics/timeseries",
            "timeseries",
            {**params, "interval": "day"},
        ),
        ("flow/cfd", "/api/v1/flow/cfd", "cfd", params),
        ("dora", "/api/v1/dora", "dora", params),
    ]


def _time_raw(
    dsn: str, query: str, params: dict[str, Any], repeats: int, timeout_s: float
) -> dict[str, Any]:
    times: list[float] = []
    rows: list[Any] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"set statement_timeout = {int(timeout_s * 1000)}")
        for _ in range(repeats):
            began = time.perf_counter()
            try:
                rows = conn.execute(query, params).fetchall()
            except psycopg.errors.QueryCanceled:
                # A lower bound: the speed-up computed from it is one too.
                return {"error": f"over {timeout_s:.0f}s (timed out)", "p50_ms": timeout_s * 1000}
            times.append((time.perf_counter() - began) * 1000)
            if sum(times) > timeout_s * 1000 / 2:
                break  # one slow answer is enough to place it
    return {"p50_ms": percentile(times, 50), "runs": len(times), "rows": rows}


def _agrees(kind: str, api: Any, raw_rows: list[Any]) -> bool | None:
    """Does the raw query give the API's numbers? (None when not comparable)"""
    if not isinstance(api, dict) or not raw_rows:
        return None
    if kind == "metrics":
        throughput, wip, cycle = raw_rows[0]
        p50 = None if not cycle or cycle[0] is None else round(cycle[0] / 3600, 4)
        return (api["throughput"], api["wip"], api["cycle_time_hours"]["p50"]) == (
            throughput,
            wip,
            p50,
        )
    if kind == "timeseries":
        pairs = [(b["throughput"], b["wip"]) for b in api["buckets"]]
        return pairs == [(int(t), int(w)) for _, t, w in raw_rows]
    if kind == "cfd":
        cells = [n for day in api["days"] for n in day["items"].values()]
        return cells == [int(n) for _, _, n in raw_rows]
    if kind == "dora":
        successful, finished, failed, _, lead_s, restore_s = raw_rows[0]
        span_days = WINDOW.total_seconds() / 86_400

        def hours(seconds: Any) -> float | None:
            return None if seconds is None else round(float(seconds) / 3600, 4)

        return (
            api["deployments"],
            api["failed_deployments"],
            api["deployment_frequency"]["per_day"],
            api["lead_time_for_changes_hours"]["p50"],
            api["time_to_restore_hours"]["p50"],
        ) == (finished, failed, round(successful / span_days, 4), hours(lead_s), hours(restore_s))
    return None


async def api_latency(
    backends: Backends,
    *,
    transitions: int,
    requests: int,
    raw_repeats: int,
    log_dir: Path,
    teams: list[str | None],
    raw_timeout_s: float = 120.0,
) -> dict[str, Any]:
    stages = load_stage_config()
    dsn = backends.create_database("api")
    loaded = await asyncio.to_thread(load, dsn, transitions, stages)
    try:
        dora = await asyncio.to_thread(load_dora, dsn)
    except psycopg.Error as exc:  # the DORA schema is someone else's and may move
        dora = {"error": f"DORA rows not loaded: {exc}"}
    result: dict[str, Any] = {
        "transitions": transitions,
        "load": loaded,
        "dora_load": dora,
        "window_days": WINDOW.days,
        "end": END.isoformat(),
    }
    port = free_port()
    env = flowmetrics_env(dsn, backends.bootstrap, "fmbenchapi", FLOW_API_PORT=str(port))
    server = flowmetrics_child("api", "serve", env, log_dir)
    base = f"http://127.0.0.1:{port}"
    try:
        paths = await _openapi_paths(base, server)
        raw_sql = {
            "metrics": raw_metrics_sql,
            "timeseries": raw_timeseries_sql,
            "cfd": raw_cfd_sql,
            "dora": raw_dora_sql,
        }
        for team in teams:
            plan = _plan(team)
            present = [(n, p, params) for n, p, _, params in plan if p in paths]
            client = python_child(
                "api_client",
                "bench.api_bench",
                [
                    "client",
                    "--base-url",
                    base,
                    "--requests",
                    str(requests),
                    "--plan",
                    orjson.dumps(present).decode(),
                ],
                log_dir,
            )
            measured = await asyncio.to_thread(client.last_json, 3600)
            scope = f"team={team}" if team else "all teams"
            for name, path, kind, _ in plan:
                row: dict[str, Any] = {"path": path, "scope": scope}
                if path not in paths:
                    row["error"] = "endpoint not in this build's OpenAPI"
                elif name in measured:
                    got = measured[name]
                    lat = got["latencies_ms"]
                    row.update(
                        p50_ms=percentile(lat, 50),
                        p99_ms=percentile(lat, 99),
                        requests=len(lat),
                        statuses=got["statuses"],
                    )
                    if kind in raw_sql:
                        query_params = {"start": END - WINDOW, "end": END, "team": team}
                        raw = await asyncio.to_thread(
                            _time_raw,
                            dsn,
                            raw_sql[kind](stages, team),
                            query_params,
                            raw_repeats,
                            raw_timeout_s,
                        )
                        row["raw_p50_ms"] = raw["p50_ms"]
                        row["raw_error"] = raw.get("error")
                        row["speedup_p50"] = raw["p50_ms"] / row["p50_ms"]
                        row["raw_agrees"] = _agrees(kind, got["last"], raw.get("rows", []))
                else:
                    row["error"] = measured.get("error", "no measurement")
                result.setdefault("endpoints", []).append(row)
    finally:
        server.stop()
    return result


async def _openapi_paths(base: str, server: Any, timeout: float = 60.0) -> set[str]:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=base, timeout=5) as client:
        while True:
            try:
                response = await client.get("/openapi.json")
                if response.status_code == 200:
                    return set(response.json().get("paths", {}))
            except httpx.HTTPError:
                pass
            if server.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"API did not start:\n{server.tail()}")
            await asyncio.sleep(0.2)


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"]:
        client_main(sys.argv[2:])
    else:
        raise SystemExit("usage: python -m bench.api_bench client ... (run via bench.run)")
