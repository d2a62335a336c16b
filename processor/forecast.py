"""Monte Carlo throughput forecasts. Pure: no I/O, no clock; the caller passes the seed.

Method (``docs/analytics.md``): each trial replays the future one day at a time,
every day's throughput drawn uniformly, with replacement, from the sampled
history of daily completions (days with zero completions included, so a
stop-and-go team is not flattered). Day 1 of a trial is the first day of the
forecast.

- :func:`forecast_when` — "when will N items be done": per trial, the number of
  days until the running total reaches N. The answer at confidence p is the
  smallest day count that at least p of the trials reached N within.
- :func:`forecast_how_many` — "how many items by a date": per trial, the total
  over the given number of days. The answer at confidence p is the largest count
  that at least p of the trials reached.

Both are reproducible: the same history, question, trials and seed give the
same answer (with the same numpy version, whose generator streams are stable
within a version). On a constant history every trial is the same and the
answer is the arithmetic one: ``ceil(N / rate)`` days, ``rate * days`` items.

Exceptions::

    ValueError
    └── ForecastError   the question cannot be answered from this history
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

CONFIDENCES: tuple[int, ...] = (50, 85, 95)
DEFAULT_TRIALS = 10_000
# Trials still short of N after this many days count as "beyond the horizon".
DEFAULT_HORIZON_DAYS = 3 * 365
# Days drawn per step: bounds memory at trials * this many int64 values.
_BLOCK_DAYS = 128


class ForecastError(ValueError):
    """The history cannot answer the question (e.g. nothing was ever completed)."""


@dataclass(frozen=True)
class Bucket:
    value: int  # days (when) or items (how many)
    trials: int


@dataclass(frozen=True)
class WhenForecast:
    items: int
    trials: int
    seed: int
    # confidence (percent) -> days needed, None when beyond the horizon
    days: dict[int, int | None]
    histogram: tuple[Bucket, ...]
    beyond_horizon: int
    horizon_days: int


@dataclass(frozen=True)
class HowManyForecast:
    days: int
    trials: int
    seed: int
    # confidence (percent) -> items completed at least
    items: dict[int, int]
    histogram: tuple[Bucket, ...]


def _history(history: Sequence[int]) -> npt.NDArray[np.int64]:
    sample = np.asarray(history, dtype=np.int64)
    if sample.ndim != 1 or sample.size == 0:
        raise ForecastError("the throughput history is empty")
    if (sample < 0).any():
        raise ForecastError("daily throughput cannot be negative")
    return sample


def _check(trials: int) -> None:
    if trials < 1:
        raise ForecastError("trials must be at least 1")


def _rank(trials: int, confidence: int) -> int:
    """0-based index of the ``confidence``-th percentile by nearest rank (exact in ints)."""
    return max(0, -(-confidence * trials // 100) - 1)


def _histogram(values: npt.NDArray[np.int64]) -> tuple[Bucket, ...]:
    distinct, counts = np.unique(values, return_counts=True)
    return tuple(Bucket(int(v), int(c)) for v, c in zip(distinct, counts, strict=True))


def forecast_when(
    history: Sequence[int],
    items: int,
    *,
    seed: int,
    trials: int = DEFAULT_TRIALS,
    horizon_days: int = DEFAULT_HORIZON_DAYS,
) -> WhenForecast:
    """Days needed to complete ``items`` more items, at each of :data:`CONFIDENCES`."""
    sample = _history(history)
    _check(trials)
    if items < 1:
        raise ForecastError("items must be at least 1")
    if not sample.any():
        raise ForecastError("no item was completed in the sampled history")
    rng = np.random.default_rng(seed)
    remaining = np.full(trials, items, dtype=np.int64)
    needed = np.full(trials, -1, dtype=np.int64)  # -1: beyond the horizon
    active = np.arange(trials)
    elapsed = 0
    while active.size and elapsed < horizon_days:
        width = min(_BLOCK_DAYS, horizon_days - elapsed)
        draws = sample[rng.integers(0, sample.size, size=(active.size, width))]
        totals = np.cumsum(draws, axis=1)
        reached = totals >= remaining[active][:, None]
        finished = reached[:, -1]
        first_day = reached.argmax(axis=1)
        needed[active[finished]] = elapsed + first_day[finished] + 1
        remaining[active] -= totals[:, -1]
        active = active[~finished]
        elapsed += width

    done = needed[needed >= 0]
    ordered = np.sort(np.where(needed >= 0, needed, np.iinfo(np.int64).max))
    answers: dict[int, int | None] = {}
    for confidence in CONFIDENCES:
        value = int(ordered[_rank(trials, confidence)])
        answers[confidence] = None if value == np.iinfo(np.int64).max else value
    return WhenForecast(
        items=items,
        trials=trials,
        seed=seed,
        days=answers,
        histogram=_histogram(done),
        beyond_horizon=int(trials - done.size),
        horizon_days=horizon_days,
    )


def forecast_how_many(
    history: Sequence[int],
    days: int,
    *,
    seed: int,
    trials: int = DEFAULT_TRIALS,
) -> HowManyForecast:
    """Items completed within the next ``days`` days, at each of :data:`CONFIDENCES`."""
    sample = _history(history)
    _check(trials)
    if days < 1:
        raise ForecastError("the forecast must cover at least one day")
    rng = np.random.default_rng(seed)
    totals = np.zeros(trials, dtype=np.int64)
    for start in range(0, days, _BLOCK_DAYS):
        width = min(_BLOCK_DAYS, days - start)
        totals += sample[rng.integers(0, sample.size, size=(trials, width))].sum(axis=1)
    descending = np.sort(totals)[::-1]
    answers = {c: int(descending[_rank(trials, c)]) for c in CONFIDENCES}
    return HowManyForecast(
        days=days, trials=trials, seed=seed, items=answers, histogram=_histogram(totals)
    )

