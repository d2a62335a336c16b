"""When the processor refreshes its deferred projections (processor/deferred.py)."""

from __future__ import annotations

from processor.deferred import FlushPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def policy(clock: Clock) -> FlushPolicy:
    return FlushPolicy(min_interval=2.0, cost_ratio=3.0, recheck_s=30.0, clock=clock)


def test_dirty_at_start_and_refreshed_at_the_first_idle_poll() -> None:
    clock = Clock()
    p = policy(clock)
    assert not p.due(idle=False)  # busy, and min_interval has not passed
    assert p.due(idle=True)  # marks a crash may have left: refresh when idle


def test_while_busy_the_interval_grows_with_the_refresh_cost() -> None:
    clock = Clock()
    p = policy(clock)
    clock.now += 2.0
    assert p.due(idle=False)
    p.done(4.0)  # a 4 s refresh: the next waits 3 x 4 = 12 s while busy
    assert p.interval == 12.0
    p.marked()
    clock.now += 11.9
    assert not p.due(idle=False)
    clock.now += 0.2
    assert p.due(idle=False)
    p.done(0.1)  # cheap again: back to the minimum
    assert p.interval == 2.0


def test_nothing_marked_nothing_due_until_the_idle_recheck() -> None:
    clock = Clock()
    p = policy(clock)
    p.done(0.01)
    clock.now += 29.0
    assert not p.due(idle=True)
    assert not p.due(idle=False)
    clock.now += 1.0
    assert p.due(idle=True)  # another processor may have died with marks left


def test_a_failure_backs_off_even_when_idle() -> None:
    clock = Clock()
    p = policy(clock)
    assert p.failed() == 2.0
    assert not p.due(idle=True)
    clock.now += 2.0
    assert p.due(idle=True)
    assert p.failed() == 4.0  # doubling
    clock.now += 3.9
    assert not p.due(idle=True)
    clock.now += 0.1
    assert p.due(idle=True)
    p.done(0.1)
    assert p.failed() == 2.0  # a success resets the backoff


def test_since_last_counts_from_the_last_success() -> None:
    clock = Clock()
    p = policy(clock)
    clock.now += 5.0
    assert p.since_last() == 5.0
    p.done(0.1)
    clock.now += 1.5
    assert p.since_last() == 1.5


def test_a_batch_marked_while_the_refresh_ran_keeps_it_dirty() -> None:
    clock = Clock()
    p = policy(clock)
    p.started()
    p.marked()  # a batch committed while the refresh (in the background) was reading
    p.done(0.5)
    assert p.dirty
    assert p.due(idle=True)  # refreshed again as soon as the processor is idle
    p.started()
    p.done(0.5)  # nothing marked meanwhile
    assert not p.dirty
    assert not p.due(idle=True)
