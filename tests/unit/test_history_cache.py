"""The processor's history cache: an LRU bounded by the number of events it holds."""

from __future__ import annotations

from processor.history_cache import HistoryCache


def test_holds_histories_until_the_event_budget_is_spent() -> None:
    cache: HistoryCache[int, None] = HistoryCache(max_events=5)
    cache.put("a", [1, 2], None)
    cache.put("b", [3, 4], None)
    assert cache.get("a") == ([1, 2], None)  # a is now the most recently used
    cache.put("c", [5, 6], None)  # 6 events > 5: the least recently used (b) goes
    assert cache.get("b") is None
    assert cache.get("a") == ([1, 2], None)
    assert cache.get("c") == ([5, 6], None)
    assert cache.events == 4
    assert len(cache) == 2


def test_replacing_an_entry_counts_only_the_new_history() -> None:
    cache: HistoryCache[int, None] = HistoryCache(max_events=4)
    cache.put("a", [1, 2, 3], None)
    cache.put("a", [1, 2, 3, 4], None)
    assert cache.events == 4
    assert cache.get("a") == ([1, 2, 3, 4], None)


def test_a_history_larger_than_the_budget_is_not_kept_and_evicts_nothing() -> None:
    cache: HistoryCache[int, None] = HistoryCache(max_events=3)
    cache.put("small", [1], None)
    cache.put("huge", [1, 2, 3, 4], None)
    assert cache.get("huge") is None
    assert cache.get("small") == ([1], None)
    assert cache.events == 1


def test_a_zero_budget_keeps_nothing_and_clear_empties() -> None:
    off: HistoryCache[int, None] = HistoryCache(max_events=0)
    off.put("a", [1], None)
    assert off.get("a") is None
    on: HistoryCache[int, None] = HistoryCache(max_events=10)
    on.put("a", [1, 2], None)
    on.clear()
    assert on.get("a") is None
    assert on.events == 0


def test_a_new_epoch_empties_the_cache() -> None:
    cache: HistoryCache[int, str] = HistoryCache(max_events=10)
    cache.at_epoch(0)
    cache.put("a", [1], "rows")
    cache.at_epoch(0)
    assert cache.get("a") == ([1], "rows")
    cache.at_epoch(1)  # a replay or rebuild rewrote events or rows in place
    assert cache.get("a") is None
