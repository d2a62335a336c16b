"""Shared by the tests of the API's precomputed reads (0008 counters, 0009 histogram):
the completion columns they write, and instants that hit the day-boundary cases."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

T0 = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday
COMPLETION_COLUMNS = (
    "item_id, completed_at, started_at, created_at, team, project, item_type, "
    "cycle_time_s, lead_time_s"
)


def instant(rng: random.Random, first_day: int, last_day: int) -> datetime:
    """A day of [T0 + first_day, T0 + last_day], often exactly on its midnight or a
    microsecond off one: the counters' edge cases."""
    day = T0 + timedelta(days=rng.randint(first_day, last_day))
    return day + rng.choice(
        [
            timedelta(0),
            timedelta(microseconds=1),
            -timedelta(microseconds=1),
            timedelta(seconds=rng.uniform(0, 86_400)),
        ]
    )
