"""Where a backfill is, per source and scope (``jira``/``project:KEY``,
``github``/``owner/name:pulls`` ...), kept in the ``backfill_cursors`` table.

A cursor says two things:

- ``covered_from`` .. ``watermark``: every change at the source updated in this
  interval has been published (durably, broker-acknowledged) as canonical events;
- ``run``: a pass in progress — its ``since``/``until`` and the reader's
  ``position`` after the last page whose events are durable. A killed pass
  resumes there.

The cursor is saved only after the events of a page were acknowledged by the
broker, so a kill between the two republishes at most one page; the stable
event ids make that harmless.

:func:`plan_run` (pure) decides where a pass starts; :class:`CursorStore` is the
thin SQL adapter, which also takes a PostgreSQL advisory lock per scope so that
two runs (a scheduled reconcile and a manual backfill) never work one scope at
the same time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import orjson
import psycopg
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from collectors.backfill.exceptions import CursorStoreUnavailable


@dataclass(frozen=True)
class RunState:
    since: datetime
    until: datetime
    covered_from: datetime
    position: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "covered_from": self.covered_from.isoformat(),
            "position": dict(self.position),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunState:
        return cls(
            since=datetime.fromisoformat(data["since"]),
            until=datetime.fromisoformat(data["until"]),
            covered_from=datetime.fromisoformat(data["covered_from"]),
            position=dict(data.get("position") or {}),
        )


@dataclass(frozen=True)
class Cursor:
    source: str
    scope: str
    covered_from: datetime | None = None
    watermark: datetime | None = None
    run: RunState | None = None
    items_total: int = 0
    last_started_at: datetime | None = None
    last_finished_at: datetime | None = None
    last_error: str | None = None

    def started(self, plan: RunPlan, now: datetime) -> Cursor:
        run = RunState(plan.since, plan.until, plan.covered_from, dict(plan.position))
        return replace(self, run=run, last_started_at=now, last_error=None)

    def progressed(self, position: Mapping[str, Any], items: int) -> Cursor:
        if self.run is None:
            raise ValueError("no pass in progress")
        return replace(
            self,
            run=replace(self.run, position=dict(position)),
            items_total=self.items_total + items,
        )

    def finished(self, watermark: datetime, now: datetime) -> Cursor:
        if self.run is None:
            raise ValueError("no pass in progress")
        return replace(
            self,
            covered_from=self.run.covered_from,
            watermark=max(watermark, self.run.covered_from),
            run=None,
            last_finished_at=now,
        )


@dataclass(frozen=True)
class RunPlan:
    """Where a pass starts: changes updated in [since, until], from ``position``."""

    since: datetime
    until: datetime
    covered_from: datetime
    position: Mapping[str, Any]
    resumed: bool  # continuing a killed pass at its saved position

    @property
    def mode(self) -> str:
        if self.resumed:
            return "resume"
        return "incremental" if self.covered_from < self.since else "full"


def plan_run(
    cursor: Cursor | None,
    *,
    since: datetime | None,
    restart: bool,
    overlap: timedelta,
    now: datetime,
    default_since: datetime,
) -> RunPlan:
    """Where the next pass of a scope starts.

    - A pass in progress resumes at its position, unless ``restart`` or the
      requested ``since`` is earlier than the pass's own (it would not cover it).
    - A completed cursor continues from ``watermark - overlap``: the overlap
      re-reads changes the source indexed late (Jira search is eventually
      consistent); re-reading is idempotent. A ``since`` before the covered
      interval (or after its end, leaving a gap) starts a full pass instead.
    - No cursor: a full pass from ``since`` (or ``default_since`` for reconcile).
    """
    if cursor is not None and not restart:
        run = cursor.run
        if run is not None and (since is None or since >= run.since):
            return RunPlan(run.since, run.until, run.covered_from, dict(run.position), True)
        if (
            run is None
            and cursor.watermark is not None
            and cursor.covered_from is not None
            and (since is None or cursor.covered_from <= since <= cursor.watermark)
        ):
            start = cursor.watermark - overlap
            if since is not None:
                start = max(start, since)
            return RunPlan(start, now, cursor.covered_from, {}, False)
    start = since if since is not None else default_since
    return RunPlan(start, now, start, {}, False)


# -- SQL adapter --------------------------------------------------------------------

_COLUMNS = (
    "source, scope, covered_from, watermark, run, items_total, "
    "last_started_at, last_finished_at, last_error"
)


class CursorStore:
    """The ``backfill_cursors`` table over one autocommit connection (which also
    holds the advisory locks, so a killed run releases them with its connection)."""

    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self.conn = conn

    @classmethod
    async def connect(cls, dsn: str) -> CursorStore:
        try:
            conn = await AsyncConnection.connect(dsn, autocommit=True)
        except psycopg.OperationalError as exc:
            raise CursorStoreUnavailable(f"cannot connect to the cursor database: {exc}") from exc
        return cls(conn)

    async def close(self) -> None:
        await self.conn.close()

    async def try_lock(self, source: str, scope: str) -> bool:
        row = await self._one(
            "select pg_try_advisory_lock(hashtextextended(%s, 0))", (_lock_key(source, scope),)
        )
        return bool(row and row[0])

    async def unlock(self, source: str, scope: str) -> None:
        await self._one(
            "select pg_advisory_unlock(hashtextextended(%s, 0))", (_lock_key(source, scope),)
        )

    async def load(self, source: str, scope: str) -> Cursor | None:
        row = await self._one(
            f"select {_COLUMNS} from backfill_cursors where source = %s and scope = %s",
            (source, scope),
        )
        return None if row is None else _cursor(row)

    async def all(self) -> list[Cursor]:
        try:
            async with self.conn.cursor() as cur:
                await cur.execute(f"select {_COLUMNS} from backfill_cursors order by 1, 2")
                return [_cursor(r) for r in await cur.fetchall()]
        except psycopg.Error as exc:
            raise CursorStoreUnavailable(f"cannot read backfill cursors: {exc}") from exc

    async def save(self, c: Cursor) -> None:
        await self._one(
            f"""insert into backfill_cursors ({_COLUMNS}, updated_at)
                values (%s, %s, %s, %s, %s, %s, %s, %s, %s, now())
                on conflict (source, scope) do update set
                  covered_from = excluded.covered_from, watermark = excluded.watermark,
                  run = excluded.run, items_total = excluded.items_total,
                  last_started_at = excluded.last_started_at,
                  last_finished_at = excluded.last_finished_at,
                  last_error = excluded.last_error, updated_at = now()
                returning 1""",
            (
                c.source,
                c.scope,
                c.covered_from,
                c.watermark,
                None if c.run is None else Jsonb(c.run.to_json()),
                c.items_total,
                c.last_started_at,
                c.last_finished_at,
                c.last_error,
            ),
        )

    async def _one(self, query: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        try:
            async with self.conn.cursor() as cur:
                await cur.execute(query, params)
                return await cur.fetchone()
        except psycopg.Error as exc:
            raise CursorStoreUnavailable(f"backfill cursor store: {exc}") from exc


def _lock_key(source: str, scope: str) -> str:
    return f"flowmetrics.backfill:{source}:{scope}"


def _cursor(row: tuple[Any, ...]) -> Cursor:
    run = row[4]
    if isinstance(run, bytes | str):
        run = orjson.loads(run)
    return Cursor(
        source=row[0],
        scope=row[1],
        covered_from=row[2],
        watermark=row[3],
        run=None if run is None else RunState.from_json(run),
        items_total=int(row[5]),
        last_started_at=row[6],
        last_finished_at=row[7],
        last_error=row[8],
    )
