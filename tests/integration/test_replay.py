"""Replay (raw topic → current mapping → events) and rebuild (events → derived tables):
both change what a mapping change changes, and running them again changes nothing."""

from __future__ import annotations

import asyncio
import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

import infra
from collectors.github import GitHubMapping
from infra.kafka import make_producer
from infra.services import projections
from infra.settings import Settings
from processor.projections import ProjectionRegistry
from processor.replay import rebuild, replay
from processor.stages import StageConfig, parse_stage_config
from tests.fixtures import load_fixture
from tests.integration.faults import GroupOffsets, snapshot
from tests.pipeline import Pipeline, wait_derived, wait_for

pytestmark = pytest.mark.integration

FLOW = [
    "jira/issue_created/cloud_TES-41_created.json",
    "jira/issue_updated/cloud_TES-41_status_todo_to_inprogress.json",
    "jira/issue_updated/cloud_TES-41_status_inprogress_to_done.json",
]
ISSUES = 3
EVENTS = ISSUES * 6  # per issue: created (upsert + initial), two updates (upsert + transition)
DEFAULT_STAGES = (Path(infra.__file__).parent / "stages.default.toml").read_text()


def stages(*replacements: tuple[str, str]) -> tuple[str, StageConfig]:
    text = DEFAULT_STAGES
    for old, new in replacements:
        assert old in text
        text = text.replace(old, new)
    return text, parse_stage_config(text)


TES_IN_PLATFORM = ("[teams]\n", '[teams]\nTES = "Platform"\n')
CLOCK_FROM_BACKLOG = ('start_stage = "Development"', 'start_stage = "Backlog"')


def registry(config: StageConfig) -> ProjectionRegistry:
    return ProjectionRegistry(projections(Settings(env="development"), config))


def for_issue(body: dict[str, Any], n: int) -> dict[str, Any]:
    clone = copy.deepcopy(body)
    clone["issue"]["id"], clone["issue"]["key"] = str(880_000 + n), f"RPL-{n}"
    if isinstance(clone.get("changelog"), dict):
        clone["changelog"]["id"] = f"{880_000 + n}{clone['changelog'].get('id', '')}"
    return clone


async def post_flows(pipeline: Pipeline) -> None:
    for n in range(ISSUES):
        for i, name in enumerate(FLOW):
            response = await pipeline.post_jira(for_issue(load_fixture(name), n),
                                                delivery_id=f"rpl-{n}-{i}")  # fmt: skip
            assert response.status_code == 202, response.text


async def folded(pipeline: Pipeline, records: int) -> None:
    """The processor committed ``records`` records of the events topic (and so folded them)."""
    async with GroupOffsets(pipeline.ends.kafka_bootstrap, pipeline.settings.consumer_group,
                            pipeline.topics.events, 4) as group:  # fmt: skip

        async def done() -> bool:
            return await group.total() >= records

        await wait_for(done, timeout=60, what=f"{records} records folded")
    await wait_derived(pipeline.ends.database_url)


def teams(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        return {row[0] for row in conn.execute("select distinct team from work_items")}


def cycle_times(dsn: str) -> list[float]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("select cycle_time_s from completions order by item_id").fetchall()
    return [round(r[0], 3) for r in rows]


async def test_replay_applies_a_mapping_change_and_changes_nothing_twice(
    pipeline: Pipeline, db_dsn: str
) -> None:
    """Project TES moved to team Platform: replay rewrites the stored upserts (same ids),
    the work items follow; a second replay and the processor's refold change nothing."""
    await post_flows(pipeline)
    await folded(pipeline, EVENTS)
    assert teams(db_dsn) == {"TES"}
    before = snapshot(db_dsn)
    bootstrap, topics = pipeline.ends.kafka_bootstrap, pipeline.topics
    producer = make_producer(bootstrap, idempotent=False)
    await producer.start()
    try:

        async def run(config: StageConfig) -> dict[str, Any]:
            report = await replay(bootstrap=bootstrap, topics=topics, producer=producer,
                                  stages=config, mapping=GitHubMapping(), dsn=db_dsn,
                                  registry=registry(config))  # fmt: skip
            return report.as_dict()

        unchanged = await run(stages()[1])
        await folded(pipeline, 2 * EVENTS)
        assert snapshot(db_dsn) == before
        moved = await run(stages(TES_IN_PLATFORM)[1])
        await folded(pipeline, 3 * EVENTS)
        after = snapshot(db_dsn)
        again = await run(stages(TES_IN_PLATFORM)[1])
        await folded(pipeline, 4 * EVENTS)
    finally:
        await producer.stop()
    print(f"\nreplay: unchanged mapping {unchanged}\n  moved team {moved}\n  again {again}")
    assert unchanged["raw_records"] == ISSUES * len(FLOW)
    assert (unchanged["stored_new"], unchanged["stored_changed"]) == (0, 0)
    assert moved["stored_changed"] == ISSUES * len(FLOW)  # every upsert carries the team
    assert moved["stored_new"] == 0
    assert teams(db_dsn) == {"Platform"}
    assert (again["stored_new"], again["stored_changed"]) == (0, 0)
    assert snapshot(db_dsn) == after != before
    items = await pipeline.get("/api/v1/work-items", limit=50)
    assert {i["team"] for i in items["items"]} == {"Platform"}


async def test_rebuild_recomputes_derived_tables_idempotently(
    pipeline: Pipeline, db_dsn: str
) -> None:
    """Rebuild equals the incremental fold; after a stage change it applies the change,
    twice the same; back to the old configuration it gives the old rows."""
    await post_flows(pipeline)
    await folded(pipeline, EVENTS)
    incremental = snapshot(db_dsn)
    default = registry(stages()[1])
    report = await rebuild(db_dsn, default, chunk=2)  # several chunks
    assert snapshot(db_dsn) == incremental
    assert report.entities["work_items"] == ISSUES
    original = cycle_times(db_dsn)

    from_backlog = registry(stages(CLOCK_FROM_BACKLOG)[1])
    await rebuild(db_dsn, from_backlog)
    changed = snapshot(db_dsn)
    longer = cycle_times(db_dsn)
    await rebuild(db_dsn, from_backlog)
    assert snapshot(db_dsn) == changed != incremental
    assert all(new > old for new, old in zip(longer, original, strict=True))
    await rebuild(db_dsn, default)
    assert snapshot(db_dsn) == incremental
    print(f"\nrebuild: cycle times {original} s → {longer} s with the clock from Backlog, "
          f"back to {cycle_times(db_dsn)} s")  # fmt: skip


async def test_cli_replay_with_a_changed_stages_file_then_rebuild(
    pipeline: Pipeline, db_dsn: str, tmp_path: Path
) -> None:
    """`flowmetrics replay` and `flowmetrics rebuild` as an operator runs them."""
    await post_flows(pipeline)
    await folded(pipeline, EVENTS)
    stages_file = tmp_path / "stages.toml"
    stages_file.write_text(stages(TES_IN_PLATFORM)[0])
    env = {
        **os.environ, "FLOW_ENV": "production", "FLOW_HOME": str(tmp_path),
        "FLOW_DATABASE_URL": db_dsn, "FLOW_KAFKA_BOOTSTRAP": pipeline.ends.kafka_bootstrap,
        "FLOW_TOPIC_PREFIX": pipeline.topics.prefix, "FLOW_STAGES_FILE": str(stages_file),
        "FLOW_KAFKA_IDEMPOTENT_PRODUCER": "0", "FLOW_LOG_LEVEL": "WARNING",
    }  # fmt: skip
    binary = Path(sys.executable).parent / "flowmetrics"
    # In a thread: the pipeline's services share this event loop.
    replayed = await asyncio.to_thread(subprocess.run, [str(binary), "replay"], env=env,
                                       capture_output=True, timeout=120)  # fmt: skip
    assert replayed.returncode == 0, replayed.stderr.decode()[-2000:]
    report = orjson.loads(replayed.stdout.decode().splitlines()[0])
    assert report["stored_changed"] == ISSUES * len(FLOW) and report["unmappable_deliveries"] == 0
    assert teams(db_dsn) == {"Platform"}
    rebuilt = await asyncio.to_thread(subprocess.run, [str(binary), "rebuild"], env=env,
                                      capture_output=True, timeout=120)  # fmt: skip
    assert rebuilt.returncode == 0, rebuilt.stderr.decode()[-2000:]
    assert orjson.loads(rebuilt.stdout)["entities_refreshed"]["work_items"] == ISSUES
    assert teams(db_dsn) == {"Platform"}
