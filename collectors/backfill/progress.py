"""Progress of a backfill: a rich progress bar on a terminal, structured logs otherwise.

Both show, per scope, items done (of the total when the source can say),
events published, items per second and the ETA; rate-limit waits show up as
they happen (the bar's description, or the ``backfill_wait`` log line of
:mod:`collectors.backfill.http`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

log = structlog.get_logger("backfill.progress")


def eta_s(done: int, total: int | None, elapsed_s: float) -> float | None:
    """Seconds left at the rate so far; None when it cannot be known."""
    if total is None or done <= 0 or elapsed_s <= 0:
        return None
    return max(total - done, 0) * elapsed_s / done


class ScopeProgress(Protocol):
    def advance(self, items: int, events: int) -> None: ...

    def close(self, status: str) -> None: ...


class Progress(Protocol):
    def scope(self, name: str, total: int | None, unit: str) -> ScopeProgress: ...

    def waiting(self, reason: str, seconds: float) -> None:
        """A rate-limit or retry wait of the scope in progress."""
        ...

    def close(self) -> None: ...


@dataclass
class _Counts:
    name: str
    total: int | None
    unit: str
    clock: Callable[[], float]
    started: float = 0.0
    items: int = 0
    events: int = 0

    def __post_init__(self) -> None:
        self.started = self.clock()

    def snapshot(self) -> dict[str, Any]:
        elapsed = self.clock() - self.started
        eta = eta_s(self.items, self.total, elapsed)
        return {
            "scope": self.name,
            "unit": self.unit,
            "items": self.items,
            "total": self.total,
            "events": self.events,
            "elapsed_s": round(elapsed, 2),
            "rate_per_s": round(self.items / elapsed, 2) if elapsed > 0 else None,
            "eta_s": None if eta is None else round(eta, 1),
        }


class _LogScope:
    def __init__(self, counts: _Counts, interval_s: float) -> None:
        self.counts = counts
        self.interval_s = interval_s
        self._last = counts.started
        log.info("backfill_scope_started", scope=counts.name, total=counts.total, unit=counts.unit)

    def advance(self, items: int, events: int) -> None:
        self.counts.items += items
        self.counts.events += events
        now = self.counts.clock()
        if now - self._last >= self.interval_s:
            self._last = now
            log.info("backfill_progress", **self.counts.snapshot())

    def close(self, status: str) -> None:
        log.info("backfill_scope_finished", status=status, **self.counts.snapshot())


class LogProgress:
    """Structured progress lines every ``interval_s`` seconds, per scope."""

    def __init__(self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.interval_s = interval_s
        self.clock = clock

    def scope(self, name: str, total: int | None, unit: str) -> ScopeProgress:
        return _LogScope(_Counts(name, total, unit, self.clock), self.interval_s)

    def waiting(self, reason: str, seconds: float) -> None:
        pass  # the client logs every wait itself (backfill_wait)

    def close(self) -> None:
        pass


class RichProgress:
    """A live progress bar per scope (stderr), for interactive runs."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar

        self._bar = Bar(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            TextColumn("· {task.fields[events]} events · {task.fields[rate]}/s"),
            TimeRemainingColumn(),
            TimeElapsedColumn(),
            TextColumn("[yellow]{task.fields[note]}"),
            console=Console(stderr=True),
            transient=False,
        )
        self._current: Any = None
        self._bar.start()

    def scope(self, name: str, total: int | None, unit: str) -> ScopeProgress:
        task = self._bar.add_task(name, total=total, unit=unit, events=0, rate="-", note="")
        self._current = task
        return _RichScope(self._bar, task, _Counts(name, total, unit, time.monotonic))

    def waiting(self, reason: str, seconds: float) -> None:
        if self._current is not None:
            self._bar.update(self._current, note=f"waiting {seconds:.0f}s: {reason}")

    def close(self) -> None:
        self._bar.stop()


class _RichScope:
    def __init__(self, bar: Any, task: Any, counts: _Counts) -> None:
        self.bar = bar
        self.task = task
        self.counts = counts

    def advance(self, items: int, events: int) -> None:
        self.counts.items += items
        self.counts.events += events
        snap = self.counts.snapshot()
        total = self.counts.total
        if total is not None and self.counts.items > total:
            total = self.counts.items  # the estimate was low (Jira's count is approximate)
        self.bar.update(
            self.task,
            completed=self.counts.items,
            total=total,
            events=self.counts.events,
            rate=snap["rate_per_s"] or "-",
            note="",
        )

    def close(self, status: str) -> None:
        self.bar.update(
            self.task,
            total=self.counts.items,
            completed=self.counts.items,
            note="" if status == "done" else status,
        )


def make_progress(interactive: bool | None = None) -> Progress:
    """Rich on a terminal (or when asked), structured logs otherwise."""
    if interactive is None:
        interactive = sys.stderr.isatty()
    return RichProgress() if interactive else LogProgress()
