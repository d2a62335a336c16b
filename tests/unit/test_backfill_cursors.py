"""Where a pass starts (plan_run), how a cursor moves, and progress arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import structlog

from collectors.backfill.command import parse_since
from collectors.backfill.cursors import Cursor, RunPlan, RunState, plan_run
from collectors.backfill.progress import LogProgress, RichProgress, eta_s

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
JAN = datetime(2024, 1, 1, tzinfo=UTC)
MAR = datetime(2024, 3, 1, tzinfo=UTC)
MAY = datetime(2024, 5, 1, tzinfo=UTC)
OVERLAP = timedelta(minutes=5)
DEFAULT = NOW - timedelta(days=30)


def plan(cursor: Cursor | None, since: datetime | None = None, restart: bool = False) -> RunPlan:
    return plan_run(
        cursor, since=since, restart=restart, overlap=OVERLAP, now=NOW, default_since=DEFAULT
    )


def done(covered_from: datetime, watermark: datetime) -> Cursor:
    return Cursor("jira", "project:FLOW", covered_from=covered_from, watermark=watermark)


def test_first_backfill_reads_from_since() -> None:
    """No cursor: a full pass from --since to now."""
    p = plan(None, JAN)
    assert (p.since, p.until, p.covered_from, p.position, p.mode) == (JAN, NOW, JAN, {}, "full")


def test_reconcile_without_a_cursor_starts_the_default_days_back() -> None:
    """A scope never seen before starts reconcile_first_days ago."""
    assert plan(None).since == DEFAULT


def test_a_killed_pass_resumes_at_its_position() -> None:
    """The saved position of a pass in progress is where the next run starts."""
    running = Cursor("jira", "project:FLOW", run=RunState(JAN, MAY, JAN, {"after_key": "FLOW-120"}))
    p = plan(running, JAN)
    assert (p.since, p.until, p.position, p.resumed) == (JAN, MAY, {"after_key": "FLOW-120"}, True)
    assert plan(running).resumed  # reconcile resumes it too
    assert plan(running, MAR).resumed  # a later --since is inside the pass


def test_an_earlier_since_or_restart_does_not_resume() -> None:
    """--restart, or a --since the pass does not cover, starts over."""
    running = Cursor("jira", "project:FLOW", run=RunState(MAR, MAY, MAR, {"after_key": "X-1"}))
    assert plan(running, JAN).position == {} and plan(running, JAN).since == JAN
    assert plan(running, MAR, restart=True).position == {}


def test_a_completed_cursor_continues_from_its_watermark_minus_the_overlap() -> None:
    """Incremental: from watermark - overlap, keeping the covered interval's start."""
    p = plan(done(JAN, MAY))
    assert (p.since, p.covered_from, p.mode) == (MAY - OVERLAP, JAN, "incremental")
    assert plan(done(JAN, MAY), MAR).since == MAY - OVERLAP  # covered: skip ahead


def test_a_since_outside_the_covered_interval_reads_it_all() -> None:
    """Before covered_from (not covered) or after the watermark (a gap): full pass."""
    assert plan(done(MAR, MAY), JAN).since == JAN
    later = NOW - timedelta(days=1)
    p = plan(done(JAN, MAR), later)
    assert (p.since, p.covered_from) == (later, later)


def test_a_cursor_moves_through_a_pass() -> None:
    """started → progressed (position, counts) → finished (watermark, no run)."""
    c = Cursor("github", "o/r:issues")
    c = c.started(plan(c, JAN), NOW)
    assert c.run is not None and c.last_started_at == NOW
    c = c.progressed({"page": 3}, 200)
    assert c.run is not None and c.run.position == {"page": 3} and c.items_total == 200
    c = c.finished(NOW - timedelta(hours=1), NOW)
    assert (c.run, c.covered_from, c.watermark, c.last_finished_at) == (
        None,
        JAN,
        NOW - timedelta(hours=1),
        NOW,
    )
    with pytest.raises(ValueError):
        c.progressed({}, 1)


def test_run_state_round_trips_through_json() -> None:
    """The run column is JSON; times keep their offsets."""
    state = RunState(JAN, MAY, JAN, {"page": 2, "unsettled_from": MAR.isoformat()})
    assert RunState.from_json(state.to_json()) == state


def test_since_spellings() -> None:
    """--since: a date (UTC midnight), an ISO time, or N days ago."""
    assert parse_since("2024-01-01") == JAN
    assert parse_since("2024-01-01T02:00:00+02:00") == JAN
    assert parse_since("30d", now=NOW) == NOW - timedelta(days=30)


def test_eta_from_the_rate_so_far() -> None:
    """ETA = items left at the rate so far; unknown without a total or progress."""
    assert eta_s(25, 100, 10.0) == 30.0
    assert eta_s(0, 100, 10.0) is None
    assert eta_s(5, None, 10.0) is None
    assert eta_s(120, 100, 10.0) == 0.0


def test_log_progress_reports_counts_rate_and_eta() -> None:
    """Non-interactive runs log structured progress lines with rate and ETA."""
    t = [0.0]
    progress = LogProgress(interval_s=1.0, clock=lambda: t[0])
    with structlog.testing.capture_logs() as logs:
        scope = progress.scope("jira project:FLOW", 100, "issues")
        t[0] = 2.0
        scope.advance(50, 200)
        scope.close("done")
    events = [line["event"] for line in logs]
    assert events == ["backfill_scope_started", "backfill_progress", "backfill_scope_finished"]
    line = logs[1]
    assert (line["items"], line["total"], line["events"], line["rate_per_s"], line["eta_s"]) == (
        50,
        100,
        200,
        25.0,
        2.0,
    )


def test_rich_progress_draws_scopes_and_waits() -> None:
    """The interactive bar takes scopes with and without totals, waits and closes."""
    progress = RichProgress()
    try:
        known = progress.scope("jira project:FLOW", 10, "issues")
        unknown = progress.scope("github o/r:commits", None, "commits")
        known.advance(12, 40)  # Jira's count is approximate: more than the total is fine
        progress.waiting("primary rate limit", 3.0)
        unknown.advance(5, 5)
        known.close("done")
        unknown.close("failed")
    finally:
        progress.close()


def test_reconcile_takes_its_scopes_from_settings_or_arguments() -> None:
    """Without --jira-project/--github-repo, reconcile walks FLOW_RECONCILE_*; with
    neither it refuses to run."""
    import argparse

    from collectors.backfill.command import request_from_args
    from collectors.backfill.exceptions import BackfillConfigError
    from infra.settings import Settings

    settings = Settings(
        env="development", reconcile_jira_projects="flow, OPS", reconcile_github_repos="acme/shop"
    )
    args = argparse.Namespace(
        command="reconcile", jira_project=None, github_repo=None, progress="log"
    )
    request = request_from_args(settings, args)
    assert (request.jira_projects, request.github_repos) == (("FLOW", "OPS"), ("acme/shop",))
    assert request.options.since is None
    with pytest.raises(BackfillConfigError):
        request_from_args(Settings(env="development"), args)
