"""Where a batch's time goes, without the broker: the processor's own code path
(decode → EventStore.fold → deferred flush) timed stage by stage, in process,
against a fresh migrated database on the local PostgreSQL (127.0.0.1:5432).

    python -m bench.fold_breakdown [--events 100000] [--batch 5000]

Wall time per stage and the process's own CPU time; wall - CPU is time spent
waiting, mostly for PostgreSQL. A diagnostic beside ``bench.run``, not a target.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import AsyncConnection, sql

from bench.generator import EventStream, GeneratorConfig, wire
from bench.harness import LOCAL_PG, with_database
from infra.db import migrate
from infra.services import projections
from infra.settings import Settings
from processor.consumer import EventStore, tune_gc
from processor.projections import ProjectionRegistry
from processor.stages import load_stage_config
from schemas.events import parse_event


class Stopwatch:
    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        w, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[stage] += time.perf_counter() - w
            self.cpu[stage] += time.process_time() - c


async def run(events: int, batch: int, seed: int) -> dict[str, Any]:
    name = f"fm_bench_breakdown_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(LOCAL_PG, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    dsn = with_database(LOCAL_PG, name)
    try:
        migrate(dsn)
        settings = Settings(env="development")
        registry = ProjectionRegistry(projections(settings, load_stage_config()))
        store = EventStore(registry, settings.processor_deferred_projections)
        watch = Stopwatch()
        _instrument(registry, watch)
        values = [
            value for _, value in map(wire, EventStream(GeneratorConfig(seed=seed)).take(events))
        ]
        started = time.perf_counter()
        async with await AsyncConnection.connect(dsn) as conn:
            for i in range(0, len(values), batch):
                with watch("decode"):
                    decoded = [parse_event(v) for v in values[i : i + batch]]
                with watch("fold + commit"):
                    async with conn.transaction():
                        with watch("  fold"):
                            await store.fold(conn, decoded)
                if (i // batch) % 10 == 9:
                    with watch("deferred flush"):
                        async with conn.transaction():
                            await store.flush(conn)
            with watch("deferred flush"):
                async with conn.transaction():
                    await store.flush(conn)
        total = time.perf_counter() - started
    finally:
        with psycopg.connect(LOCAL_PG, autocommit=True) as admin:
            admin.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )
    return {
        "events": events,
        "seconds": total,
        "events_per_s": events / total,
        "wall_s": dict(watch.wall),
        "cpu_s": dict(watch.cpu),
    }


def _instrument(registry: ProjectionRegistry, watch: Stopwatch) -> None:
    """Time each projection's refresh and the work-item store's stages."""
    import processor.work_item_store as wis

    for projection in registry.projections:
        original = projection.refresh

        async def timed(
            *args: Any, _o: Any = original, _n: str = projection.name, **kw: Any
        ) -> Any:
            with watch(f"    refresh {_n}"):
                return await _o(*args, **kw)

        projection.refresh = timed  # type: ignore[method-assign]
    for fn in ("replace_rows", "fold_work_item"):
        original = getattr(wis, fn)
        if asyncio.iscoroutinefunction(original):

            async def timed_async(*a: Any, _o: Any = original, _n: str = fn, **k: Any) -> Any:
                with watch(f"      {_n}"):
                    return await _o(*a, **k)

            setattr(wis, fn, timed_async)
        else:

            def timed_sync(*a: Any, _o: Any = original, _n: str = fn, **k: Any) -> Any:
                with watch(f"      {_n}"):
                    return _o(*a, **k)

            setattr(wis, fn, timed_sync)
    work = registry.get("work_items")
    histories = work._histories  # type: ignore[attr-defined]

    async def timed_histories(*a: Any, **k: Any) -> Any:
        with watch("      histories (count + reads)"):
            return await histories(*a, **k)

    work._histories = timed_histories  # type: ignore[attr-defined]


def main() -> None:
    p = argparse.ArgumentParser(prog="bench.fold_breakdown", description=__doc__)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=5000)
    p.add_argument("--seed", type=int, default=7)
    a = p.parse_args()
    tune_gc()  # as `flowmetrics process` does
    out = asyncio.run(run(a.events, a.batch, a.seed))
    print(f"{out['events']:,} events in {out['seconds']:.1f} s = {out['events_per_s']:,.0f}/s")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")
    print(f"{'stage':<34} {'wall s':>8} {'cpu s':>8} {'wait s':>8}")
    order = ["decode", "fold + commit", "  fold", "    refresh work_items",
             "      histories (count + reads)", "      fold_work_item", "      replace_rows",
             "deferred flush", "    refresh dora"]  # fmt: skip
    walls = out["wall_s"]
    for stage in sorted(walls, key=lambda k: order.index(k) if k in order else len(order)):
        wall = walls[stage]
        cpu = out["cpu_s"][stage]
        print(f"{stage:<34} {wall:8.2f} {cpu:8.2f} {wall - cpu:8.2f}")


if __name__ == "__main__":
    main()
