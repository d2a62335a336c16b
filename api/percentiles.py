"""Exact ``percentile_cont`` from a histogram and a few of the values (pure logic).

PostgreSQL's ``percentile_cont(q)`` over ``n`` sorted values ``v[0..n-1]`` takes
``pos = q * (n - 1)``, the values at ranks ``floor(pos)`` and ``ceil(pos)``, and
returns the first when the ranks are equal, else ``lo + (pos - floor(pos)) * (hi
- lo)``, all in double precision. This module does the same arithmetic in the
same order, so the answer is the same float.

The ranks are found through bucket counts: buckets are ordered as their values
(``flow_duration_bucket``, revision 0009), so the value at rank ``r`` is the
``r - (values in earlier buckets)``-th smallest value of the bucket whose counts
cover ``r``. Only those values need reading.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

QUANTILES = (0.5, 0.85, 0.95)


@dataclass(frozen=True)
class Ranks:
    """The 0-based ranks ``percentile_cont(q)`` reads over ``n`` values, and the
    interpolation fraction between them."""

    lo: int
    hi: int
    fraction: float


def ranks(n: int, q: float) -> Ranks:
    if n <= 0:
        raise ValueError("no values")
    pos = q * (n - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return Ranks(lo=lo, hi=hi, fraction=pos - lo)


def interpolate(r: Ranks, lo_value: float, hi_value: float) -> float:
    """``percentile_cont``'s answer given the values at ``r.lo`` and ``r.hi``."""
    if r.lo == r.hi:
        return lo_value
    return lo_value + r.fraction * (hi_value - lo_value)


def locate(counts: Sequence[tuple[int, int]], rank: int) -> tuple[int, int]:
    """(bucket, offset within the bucket) of the value at 0-based ``rank``, given
    ``(bucket, count)`` pairs in bucket order (zero counts allowed)."""
    if rank < 0:
        raise ValueError("negative rank")
    below = 0
    for bucket, n in counts:
        if rank < below + n:
            return bucket, rank - below
        below += n
    raise ValueError(f"rank {rank} beyond {below} values")


def needed_offsets(
    counts: Sequence[tuple[int, int]], quantiles: Iterable[float]
) -> dict[int, tuple[int, int]]:
    """Per bucket the quantiles read, the first and last offset they read in it
    (nothing when there are no values)."""
    n = sum(c for _, c in counts)
    if n == 0:
        return {}
    wanted: dict[int, tuple[int, int]] = {}
    for q in quantiles:
        r = ranks(n, q)
        for rank in (r.lo, r.hi):
            bucket, offset = locate(counts, rank)
            first, last = wanted.get(bucket, (offset, offset))
            wanted[bucket] = (min(first, offset), max(last, offset))
    return wanted


def percentile_from_buckets(
    counts: Sequence[tuple[int, int]], value_at: Callable[[int, int], float], q: float
) -> float | None:
    """``percentile_cont(q)`` of the values counted by ``counts``, given
    ``value_at(bucket, offset)``: the ``offset``-th smallest value of ``bucket``
    (asked only for the offsets :func:`needed_offsets` names); None when empty."""
    n = sum(c for _, c in counts)
    if n == 0:
        return None
    r = ranks(n, q)
    return interpolate(r, value_at(*locate(counts, r.lo)), value_at(*locate(counts, r.hi)))
