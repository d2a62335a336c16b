"""Deferred refresh: mark entities in the batch, recompute them later, in bulk.

A projection whose recomputation costs O(its history) (DORA: a service's every
deployment, commit and incident) cannot afford to run once per batch: at a
batch every ~0.1 s that is the quadratic term of the processor's profile. For
such a projection the batch only *marks* the entities it touched
(``projection_dirty``, in the batch's transaction, so a stored event is never
without either its derived rows or its mark), and :func:`take` hands the marks
to one refresh that recomputes each entity once, however many batches touched
it. The marks survive a crash; whichever processor flushes next takes them.

Two processors never take the same mark: :func:`take` deletes with ``skip
locked``, inside the refresh's transaction, so a mark comes back if that
transaction rolls back. Every mark is its own row (revision 0010): a batch that
marks an entity while a refresh of it runs inserts a new row instead of waiting
for the refresh's deletion to commit, so batches and refreshes overlap; that
newer mark stays for the next refresh (the running one may not see its events).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from psycopg import AsyncConnection


async def mark(conn: AsyncConnection[Any], projection: str, entities: Iterable[str]) -> None:
    # One row per entity per batch; inserts never conflict (see the module doc).
    await conn.execute(
        "insert into projection_dirty (projection, entity) select %s, unnest(%s::text[])",
        (projection, sorted(set(entities))),
    )


async def take(conn: AsyncConnection[Any], projection: str) -> list[str]:
    """The marked entities of ``projection``, unmarked in ``conn``'s transaction."""
    cur = await conn.execute(
        """delete from projection_dirty where seq in (
               select seq from projection_dirty where projection = %s
               for update skip locked)
           returning entity""",
        (projection,),
    )
    return sorted({entity for (entity,) in await cur.fetchall()})


async def pending(conn: AsyncConnection[Any]) -> int:
    """How many entities wait for a refresh (0: every derived table is current)."""
    cur = await conn.execute(
        "select count(*) from (select distinct projection, entity from projection_dirty) m"
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0


class FlushPolicy:
    """When the deferred projections are refreshed: when the processor is idle (it
    caught up), else once ``interval`` has passed since the last refresh, where
    ``interval = max(min_interval, cost_ratio x last refresh's duration)`` — so the
    refresh's share of the processor's time stays below 1/(1+cost_ratio) however
    long the history grows, and a derived row lags its events by at most about
    ``interval`` plus one refresh. Dirty at start (marks left by a crash), and again
    every ``recheck_s`` while idle (marks left by another processor that died).

    A refresh runs beside the batches: :meth:`started` when it begins, so a batch
    that marks while it runs leaves the policy dirty after :meth:`done` (that
    batch's events may be newer than what the refresh read).
    """

    def __init__(
        self,
        min_interval: float,
        cost_ratio: float,
        recheck_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.min_interval = min_interval
        self.cost_ratio = cost_ratio
        self.recheck_s = recheck_s
        self.interval = min_interval
        self.dirty = True
        self._marked_since_start = False
        self._last = self.clock()
        self._not_before = 0.0
        self._backoff = max(min_interval, 0.5)

    def since_last(self) -> float:
        """Seconds since the last successful refresh (or since start)."""
        return self.clock() - self._last

    def marked(self) -> None:
        self.dirty = True
        self._marked_since_start = True

    def started(self) -> None:
        """A refresh begins: it takes every mark committed so far."""
        self._marked_since_start = False

    def due(self, *, idle: bool) -> bool:
        now = self.clock()
        if now < self._not_before:
            return False
        if idle and not self.dirty and now - self._last >= self.recheck_s:
            self.dirty = True
        return self.dirty and (idle or now - self._last >= self.interval)

    def done(self, seconds: float) -> None:
        """A refresh that took ``seconds`` succeeded: clean, unless a batch marked
        since it started."""
        self.dirty, self._marked_since_start = self._marked_since_start, False
        self._last = self.clock()
        self.interval = max(self.min_interval, self.cost_ratio * seconds)
        self._backoff = max(self.min_interval, 0.5)

    def failed(self) -> float:
        retry_in = self._backoff
        self._not_before = self.clock() + retry_in
        self._backoff = min(self._backoff * 2, 60.0)
        return retry_in
