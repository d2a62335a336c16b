"""End-to-end processor throughput, against the ceiling and the Faust peer, on one data set.

1. N generated events are pre-loaded into a fresh events topic (and the first
   ``small`` of them into a second topic, for the memory check).
2. The ceiling (``bench.ceiling``) drains the topic in its own process.
3. ``flowmetrics process`` is started as its own OS process on a fresh migrated
   database; the clock runs from its spawn until its consumer group has
   committed every offset. Offsets are committed only after the database
   transaction, so that is the moment every derived table (and every view over
   them) reflects all N events; the row counts are then checked against what
   the generator says they must be.
4. The Faust agent (``bench.faust_peer``) drains the topic in its own process.
5. The processor runs again on the small topic: its peak RSS (VmHWM) against
   the N-event run's says whether memory grows with N.

Each participant runs alone, one after the other, so none competes for the two
cores with another.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

from bench.generator import EventStream, GeneratorConfig, StreamStats, wire
from bench.harness import (
    Backends,
    Child,
    GroupProgress,
    create_topics,
    flowmetrics_child,
    flowmetrics_env,
    partitions,
    preload,
    python_child,
)
from processor import deferred
from schemas.topics import Topics

# One batch size for all three participants: the processor's default.
BATCH = 20_000


async def load_topics(
    backends: Backends, n: int, small: int, seed: int
) -> tuple[Topics, Topics, StreamStats, StreamStats]:
    """Pre-load N events and, on a second topic, the first ``small`` of them."""
    run_id = uuid.uuid4().hex[:8]
    big, little = Topics(f"fmbench{run_id}"), Topics(f"fmbench{run_id}s")
    await create_topics(backends.bootstrap, [*big.all(), *little.all()])
    stream = EventStream(GeneratorConfig(seed=seed))
    small_stats = StreamStats()

    def records() -> Any:
        nonlocal small_stats
        for i, event in enumerate(stream.take(n)):
            if i == small - 1:  # the stats already count event i
                small_stats = _copy_stats(stream.stats)
            yield wire(event)
        if small >= n:
            small_stats = _copy_stats(stream.stats)

    await preload(backends.bootstrap, records(), [(big.events, n), (little.events, small)])
    return big, little, stream.stats, small_stats


def _copy_stats(stats: StreamStats) -> StreamStats:
    return StreamStats(**stats.as_dict())


def stored_types() -> frozenset[str] | None:
    """The event types the processor's projections claim (they are what ``events`` keeps)."""
    try:
        from infra.services import projections
        from infra.settings import Settings
        from processor.stages import load_stage_config

        claimed = projections(Settings(env="development"), load_stage_config())
        return frozenset(t for p in claimed for t in p.event_types)
    except Exception:  # the wiring is someone else's; without it the check skips events
        return None


async def run_processor(
    backends: Backends,
    topics: Topics,
    stats: StreamStats,
    log_dir: Path,
    *,
    timeout: float,
    profile: Path | None = None,
    label: str = "processor",
) -> dict[str, Any]:
    dsn = backends.create_database(label)
    env = flowmetrics_env(
        dsn, backends.bootstrap, topics.prefix, FLOW_PROCESSOR_BATCH_MAX=str(BATCH)
    )
    tps = await partitions(backends.bootstrap, topics.events)
    child = flowmetrics_child(label, "process", env, log_dir)
    spy: subprocess.Popen[bytes] | None = None
    first_commit: float | None = None
    # RSS as the run goes (events committed → MB): flat once the bounded caches fill.
    rss_curve: list[tuple[int, float]] = []

    def progress(elapsed: float, committed: int) -> None:
        nonlocal first_commit
        child.sample()
        if committed and first_commit is None:
            first_commit = elapsed
        if committed >= (len(rss_curve) + 1) * stats.events / 10:
            rss_curve.append((committed, round(child.rss_now() / 2**20, 1)))

    try:
        spy = _py_spy(child, profile) if profile else None
        group_id = env["FLOW_CONSUMER_GROUP"]
        async with GroupProgress(backends.bootstrap, group_id, tps, stats.events) as group:
            seconds, done = await group.wait_done(child, timeout, progress)
        offsets_at = seconds
        if seconds is not None:
            # Offsets commit after each batch; the deferred projections (DORA) refresh
            # after the batches: the clock stops when they are current too.
            seconds = await _deferred_current(dsn, child, timeout - seconds)
        child.sample()
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT, not SIGTERM
            spy.wait(60)
        child.stop()
    n = stats.events
    result: dict[str, Any] = {
        "events": n,
        "seconds": seconds,
        "events_per_s": n / seconds if seconds else None,
        "committed": done,
        "offsets_committed_s": offsets_at,
        "startup_s": first_commit,
        # From the first commit on (the group joined, the first batch folded).
        "steady_events_per_s": (
            n / (seconds - first_commit)
            if seconds and first_commit and seconds > first_commit
            else None
        ),
        "peak_rss_mb": round(child.peak_rss / 2**20, 1),
        "rss_curve_mb": rss_curve,
        # Busy share of one core: near 1.0 = bound by its own Python; well below =
        # waiting (mostly for PostgreSQL, which has the other core).
        "cpu_s": round(child.cpu_s, 1),
        "cpu_busy": round(child.cpu_s / seconds, 2) if seconds else None,
    }
    if seconds is None:
        result["error"] = f"not caught up after {timeout:.0f}s ({done} committed)"
    result["check"] = derived_check(dsn, stats)
    return result


async def _deferred_current(dsn: str, child: Child, timeout: float) -> float | None:
    """Seconds since ``child`` started until no entity waits for a deferred refresh."""
    deadline = time.monotonic() + timeout
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            if await deferred.pending(conn) == 0:
                return time.monotonic() - child.started
            child.sample()
            await asyncio.sleep(0.05)
    return None


def _py_spy(child: Child, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling the processor for its whole run (collapsed stacks, ``--format raw``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    beside = Path(sys.executable).with_name("py-spy")  # the venv's, when not on PATH
    return subprocess.Popen(
        [
            str(beside) if beside.exists() else "py-spy",
            "record",
            "--pid",
            str(child.popen.pid),
            "--format",
            "raw",
            "--rate",
            "97",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def derived_check(dsn: str, stats: StreamStats) -> dict[str, Any]:
    """The derived tables' row counts against the generator's expectations."""
    with psycopg.connect(dsn) as conn:

        def count(query: str) -> int:
            row = conn.execute(query).fetchone()
            return int(row[0] or 0) if row else 0

        found = {
            "events": count("select count(*) from events"),
            "work_items": count("select count(*) from work_items"),
            "transitions": count("select count(*) from transitions"),
            "stage_intervals": count("select count(*) from stage_intervals"),
            "completions": count("select count(*) from completions"),
            "daily_stage_arrivals": count("select sum(arrivals) from daily_stage_arrivals"),
            "daily_throughput": count("select sum(items) from daily_throughput"),
            "deployments": count("select count(*) from deployments"),
            "incidents": count("select count(*) from incidents"),
            "deployment_ids_stored": count(
                "select count(distinct payload->>'deployment_id') from events "
                "where type = 'deployment.recorded'"
            ),
            "incident_ids_opened": count(
                "select count(distinct payload->>'incident_id') from events "
                "where type = 'incident.opened'"
            ),
        }
    claimed = stored_types()
    expected = {
        "work_items": stats.work_items,
        "transitions": stats.transitions,
        "daily_stage_arrivals": stats.transitions,
        "daily_throughput": found["completions"],
        # DORA is derived after the batches (deferred): every stored deployment and
        # opened incident must have its row when the clock stops.
        "deployments": found["deployment_ids_stored"],
        "incidents": found["incident_ids_opened"],
    }
    if claimed is not None:
        expected["events"] = sum(n for t, n in stats.distinct_by_type.items() if t in claimed)
    mismatches = {k: (found[k], v) for k, v in expected.items() if found[k] != v}
    return {"ok": not mismatches, "found": found, "mismatches": mismatches}


async def run_ceiling(
    backends: Backends, topics: Topics, n: int, log_dir: Path, timeout: float
) -> dict[str, Any]:
    dsn = backends.create_database("ceiling", migrated=False)
    args = [
        "--bootstrap",
        backends.bootstrap,
        "--topic",
        topics.events,
        "--group",
        f"{topics.prefix}-ceiling",
        "--dsn",
        dsn,
        "--expect",
        str(n),
        "--batch",
        str(BATCH),
    ]
    return await _drain_child("ceiling", "bench.ceiling", args, n, log_dir, timeout)


async def run_faust(
    backends: Backends, topics: Topics, n: int, log_dir: Path, timeout: float
) -> dict[str, Any]:
    args = [
        "--bootstrap",
        backends.bootstrap,
        "--topic",
        topics.events,
        "--group",
        f"{topics.prefix}-faust",
        "--expect",
        str(n),
        "--datadir",
        str(backends.home / "faust"),
        "--batch",
        str(BATCH),
    ]
    # `make bench` builds the peer's own venv (faust-streaming's click pin clashes).
    python = os.environ.get("FLOW_BENCH_FAUST_PYTHON")
    result = await _drain_child("faust", "bench.faust_peer", args, n, log_dir, timeout, python)
    if "error" not in result and not result.pop("complete", True):
        result["note"] = f"timed out after {timeout:.0f}s; rate over the {result['events']} seen"
    return result


async def _drain_child(
    name: str,
    module: str,
    args: list[str],
    n: int,
    log_dir: Path,
    timeout: float,
    python: str | None = None,
) -> dict[str, Any]:
    child = python_child(name, module, args, log_dir, python=python)
    deadline = time.monotonic() + timeout
    while child.popen.poll() is None and time.monotonic() < deadline:
        child.sample()
        await asyncio.sleep(0.2)
    out = child.last_json(0)
    if "error" in out:
        return out
    events, first, done = out["events"], out["first_record_unix"], out["done_unix"]
    seconds = done - child.started_unix
    return {
        "events": events,
        "seconds": seconds,
        "events_per_s": events / seconds if seconds > 0 else None,
        "startup_s": first - child.started_unix if first else None,
        # From the first record on: what the loop does once it has joined its group.
        "steady_events_per_s": events / (done - first) if first and done > first else None,
        "peak_rss_mb": round(child.peak_rss / 2**20, 1) or None,
        "complete": out.get("complete", events >= n),
    }


async def throughput(
    backends: Backends,
    *,
    events: int,
    small: int,
    seed: int,
    log_dir: Path,
    faust: bool,
    profile: Path | None,
    timeout: float,
) -> dict[str, Any]:
    big, little, stats, small_stats = await load_topics(backends, events, small, seed)
    result: dict[str, Any] = {
        "events": events,
        "small_events": small,
        "seed": seed,
        "stream": stats.as_dict(),
    }
    result["ceiling"] = await run_ceiling(backends, big, events, log_dir, timeout)
    result["processor"] = await run_processor(
        backends, big, stats, log_dir, timeout=timeout, profile=profile
    )
    result["faust"] = (
        await run_faust(backends, big, events, log_dir, timeout)
        if faust
        else {"error": "skipped (--no-faust)"}
    )
    result["processor_small"] = await run_processor(
        backends, little, small_stats, log_dir, timeout=timeout, label="processor_small"
    )
    return result
