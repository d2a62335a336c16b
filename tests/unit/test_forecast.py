"""Monte Carlo forecasts: arithmetic on flat histories, exact distributions, reproducibility."""

from __future__ import annotations

import math
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processor.forecast import (
    CONFIDENCES,
    ForecastError,
    forecast_how_many,
    forecast_when,
)


@given(rate=st.integers(1, 20), days_of_history=st.integers(1, 120),
       items=st.integers(1, 1_000))
def test_when_on_constant_throughput_is_the_arithmetic_answer(
    rate: int, days_of_history: int, items: int
) -> None:
    """A flat history of ``rate`` a day needs ceil(N / rate) days, at every confidence."""
    result = forecast_when([rate] * days_of_history, items, seed=3, trials=200)
    expected = math.ceil(items / rate)
    assert result.days == dict.fromkeys(CONFIDENCES, expected)
    assert [(b.value, b.trials) for b in result.histogram] == [(expected, 200)]


@given(rate=st.integers(0, 20), days=st.integers(1, 400))
def test_how_many_on_constant_throughput_is_the_arithmetic_answer(rate: int, days: int) -> None:
    """A flat history of ``rate`` a day brings rate * days items, at every confidence."""
    result = forecast_how_many([rate] * 30, days, seed=5, trials=200)
    assert result.items == dict.fromkeys(CONFIDENCES, rate * days)


def test_same_seed_same_answer_other_seed_other_draws() -> None:
    """The seed alone decides the draws: reproducible answers and histograms."""
    history = [0, 3, 1, 0, 0, 5, 2, 1, 0, 4]
    first = forecast_when(history, 40, seed=2024)
    assert first == forecast_when(history, 40, seed=2024)
    assert first.histogram != forecast_when(history, 40, seed=2025).histogram
    many = forecast_how_many(history, 30, seed=7)
    assert many == forecast_how_many(history, 30, seed=7)


def geometric_quantile(p_success: float, confidence: int) -> int:
    """Smallest k with P(first success within k days) ≥ confidence %."""
    k = 1
    while 1 - (1 - p_success) ** k < confidence / 100:
        k += 1
    return k


def test_zero_days_are_sampled_like_any_other() -> None:
    """History 0,0,0,1 and one item: the waiting time is geometric(1/4), and so are the answers."""
    result = forecast_when([0, 0, 0, 1], 1, seed=11)
    assert result.days == {c: geometric_quantile(0.25, c) for c in CONFIDENCES}
    assert result.days == {50: 3, 85: 7, 95: 11}


def binomial_at_least(n: int, k: int) -> float:
    return sum(math.comb(n, i) for i in range(k, n + 1)) / (1 << n)


def test_how_many_answers_are_the_binomial_quantiles() -> None:
    """History 0,1 over 20 days: Binomial(20, ½); the answer at p is the largest count
    reached with probability ≥ p."""
    result = forecast_how_many([0, 1], 20, seed=13)
    expected = {c: max(k for k in range(21) if binomial_at_least(20, k) >= c / 100)
                for c in CONFIDENCES}
    assert result.items == expected == {50: 10, 85: 8, 95: 6}


def test_more_confidence_never_promises_more() -> None:
    """Later dates and smaller counts as the confidence rises; the histogram covers every trial."""
    history = [0, 1, 2, 0, 7, 1, 0, 0, 3]
    when = forecast_when(history, 25, seed=1, trials=5_000)
    days = [when.days[c] or 0 for c in CONFIDENCES]
    assert days == sorted(days) and days[0] > 0
    assert sum(b.trials for b in when.histogram) == 5_000
    many = forecast_how_many(history, 14, seed=1, trials=5_000)
    counts = [many.items[c] for c in CONFIDENCES]
    assert counts == sorted(counts, reverse=True)
    assert sum(b.trials for b in many.histogram) == 5_000


def test_beyond_the_horizon_is_no_date() -> None:
    """Trials still short of N at the horizon give no date rather than a made-up one."""
    result = forecast_when([0, 0, 0, 1], 50, seed=1, trials=1_000, horizon_days=30)
    assert result.days == dict.fromkeys(CONFIDENCES)
    assert result.beyond_horizon == 1_000 and result.histogram == ()


@pytest.mark.parametrize(
    ("history", "items", "message"),
    [
        ([], 5, "empty"),
        ([0, 0, 0], 5, "no item was completed"),
        ([1, -1], 5, "negative"),
        ([1, 2], 0, "at least 1"),
    ],
)
def test_unanswerable_questions_say_why(history: list[int], items: int, message: str) -> None:
    with pytest.raises(ForecastError, match=message):
        forecast_when(history, items, seed=1)


def test_ten_thousand_trials_answer_well_under_a_second() -> None:
    """The default 10,000 trials on a sparse 90-day history with a large N stay fast."""
    history = [0] * 60 + [1, 2, 0, 3, 1, 0, 2, 1, 0, 4] * 3
    started = time.perf_counter()
    forecast_when(history, 300, seed=1)
    forecast_how_many(history, 365, seed=1)
    assert time.perf_counter() - started < 1.0
