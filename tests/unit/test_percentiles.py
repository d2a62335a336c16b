"""Exact percentile_cont from bucket counts and the values of a few buckets."""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.percentiles import (
    QUANTILES,
    Ranks,
    interpolate,
    locate,
    needed_offsets,
    percentile_from_buckets,
    ranks,
)


def percentile_cont(values: list[float], q: float) -> float:
    """PostgreSQL's percentile_cont, written out from its definition."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    first, second = math.floor(pos), math.ceil(pos)
    if first == second:
        return ordered[first]
    return ordered[first] + (pos - first) * (ordered[second] - ordered[first])


def test_ranks_of_the_quantiles() -> None:
    assert ranks(1, 0.5) == Ranks(0, 0, 0.0)
    assert ranks(2, 0.5) == Ranks(0, 1, 0.5)
    assert ranks(3, 0.5) == Ranks(1, 1, 0.0)
    r = ranks(21, 0.85)
    assert (r.lo, r.hi) == (17, 17)
    r = ranks(10, 0.95)
    assert (r.lo, r.hi) == (8, 9) and r.fraction == pytest.approx(0.55)
    with pytest.raises(ValueError):
        ranks(0, 0.5)


def test_interpolate_is_percentile_conts_arithmetic() -> None:
    assert interpolate(Ranks(3, 3, 0.0), 7.0, 99.0) == 7.0
    assert interpolate(Ranks(3, 4, 0.25), 8.0, 12.0) == 9.0
    assert interpolate(Ranks(3, 4, 0.5), 5.0, 5.0) == 5.0


def test_locate_skips_empty_buckets_and_rejects_out_of_range_ranks() -> None:
    counts = [(0, 2), (3, 0), (5, 1), (9, 3)]
    assert [locate(counts, r) for r in range(6)] == [
        (0, 0),
        (0, 1),
        (5, 0),
        (9, 0),
        (9, 1),
        (9, 2),
    ]
    with pytest.raises(ValueError):
        locate(counts, 6)
    with pytest.raises(ValueError):
        locate(counts, -1)


def test_needed_offsets_are_those_of_the_ranks() -> None:
    assert needed_offsets([], QUANTILES) == {}
    assert needed_offsets([(4, 0)], QUANTILES) == {}
    # 100 values: p50 reads ranks 49 and 50, p85 84 and 85, p95 94 and 95.
    counts = [(0, 50), (1, 30), (2, 5), (3, 10), (4, 5)]
    assert needed_offsets(counts, QUANTILES) == {
        0: (49, 49),
        1: (0, 0),
        2: (4, 4),
        3: (0, 9),
        4: (0, 0),
    }
    assert needed_offsets(counts, [0.5]) == {0: (49, 49), 1: (0, 0)}
    counts = [(0, 40), (1, 20), (2, 30), (3, 10)]
    assert needed_offsets(counts, QUANTILES) == {1: (9, 10), 2: (24, 25), 3: (4, 5)}


@given(
    st.lists(
        st.one_of(
            st.integers(0, 50).map(float),  # ties and zeros
            st.floats(0, 1e7, allow_nan=False),
        ),
        min_size=1,
        max_size=300,
    ),
    st.integers(1, 40),
)
def test_equals_percentile_cont_for_any_monotone_bucketing(values: list[float], width: int) -> None:
    def bucket(v: float) -> int:
        return int(v // width)

    counts = sorted(Counter(bucket(v) for v in values).items())
    wanted = needed_offsets(counts, QUANTILES)
    by_bucket: dict[int, list[float]] = defaultdict(list)
    for v in sorted(values):
        by_bucket[bucket(v)].append(v)

    def value_at(b: int, offset: int) -> float:
        first, last = wanted[b]  # only the offsets named are read
        assert first <= offset <= last
        return by_bucket[b][offset]

    for q in QUANTILES:
        assert percentile_from_buckets(counts, value_at, q) == percentile_cont(values, q)


def test_empty_is_none() -> None:
    assert percentile_from_buckets([], lambda b, o: 0.0, 0.5) is None
