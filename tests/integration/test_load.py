"""A bounded load run on loopback: a steady rate of signed Jira deliveries for
at least 60 s, from a second process (``tests/integration/load_generator.py``
says why not wrk), against collectors, processor and API running here.

Pass: every request answered 2xx; every new delivery's events in the database
exactly once (loss = 0, checked by event id); derived rows and the API's
numbers exactly those of the items sent (duplicates = 0). The report (rates,
p50/p99 acknowledgement latency, loss, duplicates) is printed, and written to
$FLOW_LOAD_REPORT when set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from collectors.jira import normalize_jira
from processor.stages import load_stage_config
from schemas.topics import Topics
from tests.integration.load_generator import item_deliveries
from tests.integration.security_support import end_offsets, settle_fully
from tests.pipeline import JIRA_SECRET, running_pipeline, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RATE = float(os.environ.get("FLOW_LOAD_RATE", "50"))
SECONDS = float(os.environ.get("FLOW_LOAD_SECONDS", "60"))
PREFIX = "LOAD"
REPO = Path(__file__).resolve().parents[2]
# The fixtures' day: every item is created, started and done on 2019-02-16.
DAY = {"start": "2019-02-16T00:00:00Z", "end": "2019-02-17T00:00:00Z"}
CYCLE_TIME_HOURS = 78.468 / 3600


async def generate_load(base_url: str, out: Path) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.integration.load_generator",
        "--url", base_url, "--secret", JIRA_SECRET, "--rate", str(RATE),
        "--seconds", str(SECONDS), "--prefix", PREFIX, "--out", str(out),
        cwd=REPO, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), timeout=SECONDS * 3 + 120)
    assert process.returncode == 0, err.decode()[-4000:]
    return read_json(out)


def read_json(path: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(path.read_text())
    return report


def publish_report(summary: dict[str, Any]) -> None:
    print("\nload run:", json.dumps(summary, indent=1))
    if os.environ.get("FLOW_LOAD_REPORT"):
        Path(os.environ["FLOW_LOAD_REPORT"]).write_text(json.dumps(summary, indent=1))


def expected_event_ids(items: int) -> set[str]:
    """What the collectors must have published for every new delivery (pure normalizer)."""
    stages = load_stage_config(None)
    ids: set[str] = set()
    for delivery in item_deliveries(PREFIX, items):
        body = json.loads(delivery.body)
        result = normalize_jira(body, received_at=datetime.now(UTC), stages=stages)
        ids.update(event.event_id for event in result.events)
    return ids


def database_counts(db_dsn: str, expected: set[str]) -> dict[str, int]:
    with psycopg.connect(db_dsn) as conn:

        def one(query: str, *args: Any) -> int:
            row = conn.execute(query, args).fetchone()
            return int(row[0]) if row else 0

        return {
            "events": one("select count(*) from events"),
            "expected_events_found": one(
                "select count(*) from events where event_id = any(%s)", list(expected)
            ),
            "work_items": one("select count(*) from work_items"),
            "done_items": one("select count(*) from work_items where flow_state = 'done'"),
            "transitions": one("select count(*) from transitions"),
            "completions": one("select count(*) from completions"),
        }


async def test_steady_load_is_acknowledged_and_folded_exactly_once(
    db_dsn: str, kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    """≥ 60 s at a steady rate: zero non-2xx, zero loss, zero duplicates."""
    assert SECONDS >= 60 or "FLOW_LOAD_SECONDS" in os.environ
    async with running_pipeline(db_dsn, kafka_bootstrap, topics) as p:
        report = await generate_load(str(p.collector.base_url).rstrip("/"), tmp_path / "r.json")
        await settle_fully(p, timeout=180)
        items = report["items"]
        expected = expected_event_ids(items)

        async def all_folded() -> bool:
            found = database_counts(db_dsn, expected)["expected_events_found"]
            return found == len(expected)

        # Belt and braces over settle: a loss shows as a timeout here, then in `loss`.
        with contextlib.suppress(TimeoutError):
            await wait_for(all_folded, timeout=60, what="every accepted event in the database")
        await settle_fully(p, timeout=60)
        counts = database_counts(db_dsn, expected)
        published = await end_offsets(kafka_bootstrap, topics)
        metrics = await p.get("/api/v1/metrics", **DAY)

    new = report["new_deliveries"]
    loss = len(expected) - counts["expected_events_found"]
    duplicates = (
        (counts["events"] - counts["expected_events_found"])
        + (counts["transitions"] - 3 * items)
        + (counts["completions"] - items)
        + (counts["work_items"] - items)
        + (metrics["throughput"] - items)
    )
    summary = {
        "rate_per_s": RATE,
        "seconds": SECONDS,
        "achieved_rate_per_s": report["achieved_rate"],
        "requests": report["requests"],
        "new_deliveries": new,
        "replays": report["replays"],
        "statuses": report["statuses"],
        "ack_latency_ms": report["latency_ms"],
        "schedule_lag_ms": report["schedule_lag_ms"],
        "items": items,
        "events_expected": len(expected),
        "loss": loss,
        "duplicates": duplicates,
        "database": counts,
        # Information: the raw topic may hold a delivery twice by design (spool
        # re-publish after a broker loss); the database must not.
        "raw_records": published[topics.raw],
        "api_throughput": metrics["throughput"],
    }
    publish_report(summary)

    assert report["non_2xx"] == [], report["non_2xx"]
    assert len(report["accepted_new"]) == new == 3 * items
    assert loss == 0 and duplicates == 0, summary
    assert counts["done_items"] == items
    assert metrics["wip"] == 0
    assert metrics["cycle_time_hours"]["p50"] == pytest.approx(CYCLE_TIME_HOURS, abs=1e-4)
    # Steady: the generator kept its schedule (no client-side backlog).
    assert report["achieved_rate"] >= 0.95 * RATE
