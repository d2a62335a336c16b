"""Processor crash safety: a fixed stream of 100,000 events, the processor SIGKILLed at
random points, and the database it ends with equals a clean run's, table by table."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from pathlib import Path

import pytest

from bench.generator import generate, wire
from infra.kafka import ensure_topics
from infra.services import projections, stage_config
from infra.settings import Settings
from schemas.topics import Topics
from tests.integration.faults import (
    GroupOffsets,
    ProcessorProcess,
    counts,
    database_copy,
    elapsed,
    folding_since,
    processor_env,
    produce,
    row_diff,
    server_now,
    snapshot,
    zero_counters,
)
from tests.pipeline import wait_derived

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS = 100_000
KILLS = 6
SEED = 20261122
PARTITIONS = 4


async def test_sigkilled_processor_ends_with_the_clean_runs_database(
    kafka_bootstrap: str, pg_server_dsn: str, template_database: str, tmp_path: Path
) -> None:
    """SIGKILL at random points, restart each time: same rows and checksums as a run
    that was never interrupted; nothing lost, nothing folded twice."""
    started = time.monotonic()
    topics = Topics(f"crash{uuid.uuid4().hex[:10]}")
    await ensure_topics(kafka_bootstrap, topics.all(), partitions=PARTITIONS)
    stream = list(generate(EVENTS, seed=SEED))
    produced = await produce(kafka_bootstrap, topics.events, (wire(e) for e in stream))
    assert produced == EVENTS
    print(f"\nproduced {EVENTS} at {elapsed(started)} s")
    claimed = {t for p in projections(Settings(env="development"), stage_config(Settings(
        env="development"))) for t in p.event_types}  # fmt: skip
    expected_events = len({e["event_id"] for e in stream if e["type"] in claimed})
    rng = random.Random(SEED)

    with database_copy(pg_server_dsn, template_database) as clean_dsn, \
            database_copy(pg_server_dsn, template_database) as chaos_dsn:  # fmt: skip
        clean = ProcessorProcess("clean", processor_env(
            clean_dsn, kafka_bootstrap, topics.prefix, f"{topics.prefix}-clean", tmp_path
        ), tmp_path)  # fmt: skip
        chaos = ProcessorProcess("chaos", processor_env(
            chaos_dsn, kafka_bootstrap, topics.prefix, f"{topics.prefix}-chaos", tmp_path
        ), tmp_path)  # fmt: skip
        kill_points: list[int] = []
        try:
            async with GroupOffsets(kafka_bootstrap, f"{topics.prefix}-clean", topics.events,
                                    PARTITIONS) as clean_group, \
                    GroupOffsets(kafka_bootstrap, f"{topics.prefix}-chaos", topics.events,
                                 PARTITIONS) as chaos_group:  # fmt: skip
                clean.start()
                chaos.start()
                deadline = time.monotonic() + 420  # generous: a loaded CI machine
                while len(kill_points) < KILLS:
                    # Wait until the new process is inside a fold transaction, then
                    # kill it a random moment later: mid-transaction, between the
                    # database commit and the offset commit, in the next fetch.
                    since = server_now(chaos_dsn)
                    while not folding_since(chaos_dsn, since):
                        chaos.check_alive()
                        assert time.monotonic() < deadline, "the processor never folded"
                        await asyncio.sleep(0.02)
                    await asyncio.sleep(rng.uniform(0.0, 2.0))
                    chaos.check_alive()
                    chaos.kill()
                    kill_points.append(await chaos_group.total())
                    print(
                        f"kill {len(kill_points)} at {elapsed(started)} s: "
                        f"committed {kill_points[-1]} (clean {await clean_group.total()})"
                    )
                    chaos.start()
                for group, proc in ((clean_group, clean), (chaos_group, chaos)):
                    while await group.total() < EVENTS:
                        proc.check_alive()
                        assert time.monotonic() < deadline, f"{proc.name} did not finish"
                        await asyncio.sleep(0.2)
                    left = max(deadline - time.monotonic(), 30.0)
                    await wait_derived(proc.env["FLOW_DATABASE_URL"], timeout=left)
                    print(f"{proc.name} done at {elapsed(started)} s")
        finally:
            clean.stop()
            chaos.stop()
        clean_snapshot, chaos_snapshot = snapshot(clean_dsn), snapshot(chaos_dsn)
        zeros = (zero_counters(clean_dsn), zero_counters(chaos_dsn))
        differing = [t for t in clean_snapshot if clean_snapshot[t] != chaos_snapshot.get(t)]
        for table in differing:
            print(f"{table} differs:\n{row_diff(clean_dsn, chaos_dsn, table)}")

    stored = clean_snapshot["events"][0]
    print(
        f"\ncrash safety: events replayed = {EVENTS}, kills survived = {len(kill_points)} "
        f"(at committed offsets {kill_points}), processor starts = {chaos.starts}, "
        f"distinct events stored = {chaos_snapshot['events'][0]} of {expected_events}, "
        f"loss = {expected_events - chaos_snapshot['events'][0]}, "
        f"duplicates = {chaos_snapshot['events'][0] - stored}, {elapsed(started)} s\n"
        f"  rows: {counts(chaos_snapshot)}\n"
        f"  counter rows at 0 (clean, chaos; not compared): {zeros}"
    )
    assert len(kill_points) >= 5, f"only {len(kill_points)} kills landed before the end"
    assert stored == expected_events
    assert chaos_snapshot == clean_snapshot
