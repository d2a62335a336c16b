"""Flow analytics end to end: signed Jira webhooks in, hand-computed numbers out.

The scenario (UTC; D0 = Monday 2024-03-04; default stages, team FLOW, plus team
Payments whose cycle time starts at Testing):

=======  =====================================================================
FLOW-1   To Do D0 09 → In Progress D0 10 → In Review D1 10 → Done D2 10
FLOW-2   To Do D0 09 → In Progress D1 09 → Staging D1 21 → Done D2 09
FLOW-3   To Do D0 12 → Selected for Development D1 00 → In Progress D2 00 → Done D3 00
FLOW-4   In Progress D0 00 → Done D0 06 → To Do D0 12 (reopened) → In Progress D1 12
         → Done D3 12
FLOW-5   To Do D1 00 → In Progress D2 00 → In Review D3 00        (open)
FLOW-6   To Do D0 00 → In Progress D0 12                          (open)
FLOW-7   To Do D0 12 → In Progress D1 00                          (open)
FLOW-8   To Do D0 00 → In Progress D1 00 → Won't Do D2 00         (removed)
FLOW-9   To Do D2 00                                              (backlog)
FLOW-10  To Do D1 00, deleted D1 06
PAY-1    To Do D0 00 → In Progress D0 12 → In Review D1 12 → Done D2 00
PAY-2    To Do D0 00 → In Progress D1 00     (not started: Payments starts at Testing)
PAY-3    To Do D0 00 → In Review D3 00                            (open)
=======  =====================================================================

FLOW cycle times (hours): FLOW-1 48, FLOW-2 24, FLOW-3 24, FLOW-4 84 (first
start to final completion). Sorted 24, 24, 48, 84 → p50 36, p85 67.8, p95 78.6.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path

import pytest
import pytest_asyncio

from infra.demo_report import summarize_flow_analytics
from schemas.topics import Topics
from tests.jira_factory import JiraScenario
from tests.pipeline import Pipeline, running_pipeline

pytestmark = pytest.mark.e2e

D0 = datetime(2024, 3, 4, tzinfo=UTC)
D4 = D0 + timedelta(days=4)
STAGES = ("Backlog", "Analysis", "Development", "Testing", "Deployment", "Production")


def at(day: int, hour: int = 0) -> datetime:
    return D0 + timedelta(days=day, hours=hour)


def scenario() -> JiraScenario:
    jira = JiraScenario()

    def item(key: str, start: tuple[int, int], status: str,
             *moves: tuple[tuple[int, int], str]) -> None:
        jira.created(key, at(*start), status)
        for when, to_status in moves:
            jira.moved(key, at(*when), status, to_status)
            status = to_status

    item("FLOW-1", (0, 9), "To Do", ((0, 10), "In Progress"), ((1, 10), "In Review"),
         ((2, 10), "Done"))
    item("FLOW-2", (0, 9), "To Do", ((1, 9), "In Progress"), ((1, 21), "Staging"),
         ((2, 9), "Done"))
    item("FLOW-3", (0, 12), "To Do", ((1, 0), "Selected for Development"),
         ((2, 0), "In Progress"), ((3, 0), "Done"))
    item("FLOW-4", (0, 0), "In Progress", ((0, 6), "Done"), ((0, 12), "To Do"),
         ((1, 12), "In Progress"), ((3, 12), "Done"))
    item("FLOW-5", (1, 0), "To Do", ((2, 0), "In Progress"), ((3, 0), "In Review"))
    item("FLOW-6", (0, 0), "To Do", ((0, 12), "In Progress"))
    item("FLOW-7", (0, 12), "To Do", ((1, 0), "In Progress"))
    item("FLOW-8", (0, 0), "To Do", ((1, 0), "In Progress"), ((2, 0), "Won't Do"))
    item("FLOW-9", (2, 0), "To Do")
    item("FLOW-10", (1, 0), "To Do")
    jira.deleted("FLOW-10", at(1, 6))
    item("PAY-1", (0, 0), "To Do", ((0, 12), "In Progress"), ((1, 12), "In Review"),
         ((2, 0), "Done"))
    item("PAY-2", (0, 0), "To Do", ((1, 0), "In Progress"))
    item("PAY-3", (0, 0), "To Do", ((3, 0), "In Review"))
    return jira


def stages_file(directory: Path) -> Path:
    """The packaged default plus team Payments (PAY) whose cycle time starts at Testing."""
    text = resources.files("infra").joinpath("stages.default.toml").read_text(encoding="utf-8")
    text = text.replace("\n[teams]\n", '\n[teams]\nPAY = "Payments"\n', 1)
    text += '\n[overrides."Payments"]\nstart_stage = "Testing"\n'
    path = directory / "stages.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest_asyncio.fixture(loop_scope="session")
async def flow(
    db_dsn: str, kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> AsyncIterator[Pipeline]:
    async with running_pipeline(
        db_dsn, kafka_bootstrap, topics, stages_file=stages_file(tmp_path)
    ) as pipeline:
        for body in scenario().bodies:
            response = await pipeline.post_jira(body)
            assert response.status_code == 202, response.text
        await pipeline.settle()
        yield pipeline


WINDOW = {"start": D0.isoformat(), "end": D4.isoformat()}


async def test_cfd_counts_items_at_or_past_each_stage(flow: Pipeline) -> None:
    """Per day, items that reached each stage or a later one; reopen and removal as defined."""
    cfd = await flow.get("/api/v1/flow/cfd", team="FLOW", **WINDOW)
    assert [s["name"] for s in cfd["stages"]] == list(STAGES)
    table = {d["day"]: [d["items"][s] for s in STAGES] for d in cfd["days"]}
    assert table == {
        "2024-03-04": [6, 3, 3, 1, 1, 1],
        "2024-03-05": [7, 6, 5, 3, 2, 1],
        "2024-03-06": [8, 7, 7, 3, 3, 3],
        "2024-03-07": [8, 7, 7, 5, 4, 4],
    }
    # Days before the window start from the counts reached so far.
    later = await flow.get("/api/v1/flow/cfd", team="FLOW", start=at(2).isoformat(),
                           end=D4.isoformat())
    assert [d["items"]["Backlog"] for d in later["days"]] == [8, 8]


async def test_cfd_day_cut_by_end_counts_up_to_end(flow: Pipeline) -> None:
    """end = D1 10:00: D1 counts the arrivals before 10:00 only (FLOW-1 enters In Review
    at 10:00 exactly, FLOW-2 Staging at 21:00: neither counts), docs/analytics.md."""
    cfd = await flow.get("/api/v1/flow/cfd", team="FLOW", start=D0.isoformat(),
                         end=at(1, 10).isoformat())  # fmt: skip
    table = {d["day"]: [d["items"][s] for s in STAGES] for d in cfd["days"]}
    assert table == {
        "2024-03-04": [6, 3, 3, 1, 1, 1],
        "2024-03-05": [7, 6, 5, 1, 1, 1],
    }


async def test_aging_wip_flags_against_team_percentiles(flow: Pipeline) -> None:
    """Age = as-of minus start; > p85 at risk, > p95 breached, against the team cycle times."""
    aging = await flow.get("/api/v1/flow/aging-wip", team="FLOW", **WINDOW)
    assert aging["teams"] == {
        "FLOW": {"completed": 4, "p50_hours": 36.0, "p85_hours": 67.8, "p95_hours": 78.6}
    }
    assert [(i["key"], i["stage"], i["age_hours"], i["flag"]) for i in aging["items"]] == [
        ("FLOW-6", "Development", 84.0, "breached"),
        ("FLOW-7", "Development", 72.0, "at_risk"),
        ("FLOW-5", "Testing", 48.0, "on_track"),
    ]
    assert aging["summary"] == {"on_track": 1, "at_risk": 1, "breached": 1, "no_reference": 0}


async def test_team_start_stage_override_drives_age_and_cycle_time(flow: Pipeline) -> None:
    """Payments starts at Testing: its cycle times, ages and WIP follow that, not the default."""
    aging = await flow.get("/api/v1/flow/aging-wip", team="Payments", **WINDOW)
    assert [(i["key"], i["age_hours"], i["flag"]) for i in aging["items"]] == [
        ("PAY-3", 24.0, "breached")
    ]
    assert aging["teams"]["Payments"]["p95_hours"] == 12.0
    scatter = await flow.get("/api/v1/flow/cycle-time-scatter", team="Payments", **WINDOW)
    assert [(i["key"], i["cycle_time_hours"]) for i in scatter["items"]] == [("PAY-1", 12.0)]


async def test_cycle_time_scatter_lists_completions_with_percentile_lines(flow: Pipeline) -> None:
    """Completed items in the window by completion time, with exact p50/p85/p95."""
    scatter = await flow.get("/api/v1/flow/cycle-time-scatter", team="FLOW", **WINDOW)
    assert [(i["key"], i["completed_at"], i["cycle_time_hours"]) for i in scatter["items"]] == [
        ("FLOW-2", "2024-03-06T09:00:00+00:00", 24.0),
        ("FLOW-1", "2024-03-06T10:00:00+00:00", 48.0),
        ("FLOW-3", "2024-03-07T00:00:00+00:00", 24.0),
        ("FLOW-4", "2024-03-07T12:00:00+00:00", 84.0),
    ]
    assert scatter["count"] == 4
    assert scatter["mean_hours"] == 45.0
    assert scatter["percentiles_hours"] == {"p50": 36.0, "p85": 67.8, "p95": 78.6}


async def test_time_in_stage_and_flow_efficiency(flow: Pipeline) -> None:
    """Stays summed per item and stage; efficiency = active / (active + queue), start to done."""
    report = await flow.get("/api/v1/flow/time-in-stage", team="FLOW", **WINDOW)
    stages = {s["name"]: (s["items"], s["mean_hours"], s["p50_hours"], s["p85_hours"])
              for s in report["stages"]}
    assert stages == {
        "Backlog": (4, 15.25, 18.0, 24.0),
        "Analysis": (1, 24.0, 24.0, 24.0),
        "Development": (4, 28.5, 24.0, 40.5),
        "Testing": (1, 24.0, 24.0, 24.0),
        "Deployment": (1, 12.0, 12.0, 12.0),
        "Production": (1, 6.0, 6.0, 6.0),  # FLOW-4, done before it was reopened
    }
    efficiency = report["flow_efficiency"]
    assert {i["key"]: i["efficiency"] for i in efficiency["items"]} == {
        "FLOW-1": 1.0, "FLOW-2": 0.5, "FLOW-3": 1.0, "FLOW-4": 0.6923,
    }
    assert (efficiency["active_hours"], efficiency["queue_hours"]) == (138.0, 36.0)
    assert efficiency["overall"] == 0.7931


async def test_forecast_on_constant_throughput_is_the_arithmetic_answer(flow: Pipeline) -> None:
    """Two items a day: 10 items take 5 days; 3 days bring 6 items, at every confidence."""
    window = {"team": "FLOW", "start": at(2).isoformat(), "end": D4.isoformat(), "seed": 1}
    when = await flow.get("/api/v1/flow/forecast", items=10, **window)
    assert when["history"] == {"from": "2024-03-06", "to": "2024-03-07", "days": 2,
                               "completed": 4, "per_day_mean": 2.0}
    assert when["begins"] == "2024-03-08"
    assert [(a["confidence"], a["days"], a["date"]) for a in when["answers"]] == [
        (50, 5, "2024-03-12"), (85, 5, "2024-03-12"), (95, 5, "2024-03-12")
    ]
    assert when["histogram"] == [{"days": 5, "date": "2024-03-12", "trials": 10_000}]
    many = await flow.get("/api/v1/flow/forecast", until="2024-03-10", **window)
    assert many["days"] == 3
    assert [(a["confidence"], a["items"]) for a in many["answers"]] == [(50, 6), (85, 6), (95, 6)]


async def test_forecast_is_reproducible_with_a_seed(flow: Pipeline) -> None:
    """The same seed gives the same answer and histogram; zero days are sampled too."""
    params = {"team": "FLOW", **WINDOW, "items": 6, "seed": 42}
    first = await flow.get("/api/v1/flow/forecast", **params)
    assert first == await flow.get("/api/v1/flow/forecast", **params)
    assert first["history"]["days"] == 4 and first["history"]["completed"] == 4
    days = [a["days"] for a in first["answers"]]
    assert days == sorted(days) and days[0] >= 3  # at most 2 a day: never under 3 days
    response = await flow.api.get("/api/v1/flow/forecast", params={"items": 1, "until": "x"})
    assert response.status_code == 422


async def test_demo_summary_prints_forecast_and_aging(flow: Pipeline) -> None:
    """The lines `make demo` prints: aging WIP by flag, oldest items, both forecasts."""
    lines = await summarize_flow_analytics(flow.api, team="FLOW", start=D0, end=D4)
    text = "\n".join(lines)
    assert "3 items in progress: 1 on track, 1 at risk (> p85), 1 breached (> p95)" in text
    assert "FLOW-6" in text
    assert "10 more items" in text and "2024-03-" in text
