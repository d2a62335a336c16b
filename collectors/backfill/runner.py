"""One pass over one scope: plan from the cursor, read, publish, advance the cursor.

The order per page is the whole durability argument: publish the page's events
and wait for the broker's acknowledgements, *then* store the cursor. A kill
before the cursor write republishes that page on resume; stable event ids make
the second copy a no-op in the processor.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import structlog

from collectors.backfill.cursors import Cursor, CursorStore, plan_run
from collectors.backfill.exceptions import BackfillError, ScopeBusy
from collectors.backfill.progress import Progress
from collectors.backfill.reader import Done, ScopeReader
from collectors.exceptions import CollectorError
from collectors.publisher import Publisher

log = structlog.get_logger("backfill")


@dataclass(frozen=True)
class ScopeOutcome:
    source: str
    scope: str
    mode: str  # full | incremental | resume
    since: datetime
    items: int
    events: int
    seconds: float
    watermark: datetime | None
    error: str | None = None

    @property
    def rate_per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class RunOptions:
    since: datetime | None = None  # None: continue from the cursor (reconcile)
    restart: bool = False  # ignore the cursor
    overlap: timedelta = timedelta(minutes=5)
    default_since: timedelta = timedelta(days=30)  # reconcile without a cursor


async def run_scope(
    reader: ScopeReader,
    *,
    store: CursorStore,
    publisher: Publisher,
    progress: Progress,
    options: RunOptions,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ScopeOutcome:
    """Run one pass of ``reader``'s scope (raises :class:`ScopeBusy` if another run has it)."""
    source, scope = reader.source, reader.scope
    if not await store.try_lock(source, scope):
        raise ScopeBusy(f"{source} {scope} is being backfilled by another run")
    started = time.monotonic()
    items = events = 0
    cursor: Cursor | None = None
    try:
        now = clock()
        cursor = await store.load(source, scope) or Cursor(source, scope)
        plan = plan_run(
            cursor,
            since=options.since,
            restart=options.restart,
            overlap=options.overlap,
            now=now,
            default_since=now - options.default_since,
        )
        log.info(
            "backfill_pass",
            source=source,
            scope=scope,
            mode=plan.mode,
            since=plan.since.isoformat(),
            until=plan.until.isoformat(),
            position=dict(plan.position),
        )
        cursor = cursor.started(plan, now)
        await store.save(cursor)
        bar = progress.scope(f"{source} {scope}", await reader.estimate(plan), reader.unit)
        status = "failed"
        try:
            async for step in reader.read(plan):
                if isinstance(step, Done):
                    cursor = cursor.finished(step.watermark, clock())
                    await store.save(cursor)
                    break
                if step.events:
                    await publisher.publish(None, step.events)
                cursor = cursor.progressed(step.position, step.items)
                await store.save(cursor)
                items += step.items
                events += len(step.events)
                bar.advance(step.items, len(step.events))
            status = "done"
        finally:
            bar.close(status)
        return ScopeOutcome(
            source,
            scope,
            plan.mode,
            plan.since,
            items,
            events,
            time.monotonic() - started,
            cursor.watermark,
        )
    except (BackfillError, CollectorError) as exc:
        log.error(
            "backfill_scope_failed",
            source=source,
            scope=scope,
            error=str(exc),
            items=items,
            events=events,
        )
        if cursor is not None:
            await _record_error(store, cursor, str(exc))
        raise
    finally:
        try:
            await store.unlock(source, scope)
        except BackfillError as exc:  # the lock dies with the connection anyway
            log.warning("backfill_unlock_failed", source=source, scope=scope, error=str(exc))


async def _record_error(store: CursorStore, cursor: Cursor, error: str) -> None:
    try:
        await store.save(replace(cursor, last_error=error[:2000]))
    except BackfillError as exc:
        log.error("backfill_cursor_error_not_saved", error=str(exc))
