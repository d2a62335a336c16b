"""An LRU of entity histories, checked against the event store before each use.

Recomputing an item from its full history is what makes the fold exact for
late and out-of-order events; *reading* that history again every time the item
moves is what made it slow (a payload read and a pydantic validation per stored
event, per batch). The processor keeps the histories it folded last, with what
it derived from them, and before using one asks the store only how many events
the entity has: the events table is append-only and idempotent by
``event_id``, so a cached history plus the batch's newly stored events is the
full history exactly when their count is the store's count. Anything else
(another processor folded the entity after a rebalance, a rolled-back batch) is
a miss and the history is read. ``flowmetrics replay`` and ``rebuild``, which
rewrite stored events or derived rows in place, bump ``events_epoch``; a new
epoch empties the cache.

Bounded by the number of events held, never by the stream: peak memory does not
grow with the number of events processed.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, NamedTuple, TypeVar

E = TypeVar("E")
D = TypeVar("D")


class Cached(NamedTuple, Generic[E, D]):
    history: list[E]
    derived: D


class HistoryCache(Generic[E, D]):
    def __init__(self, max_events: int) -> None:
        self.max_events = max_events
        self.events = 0
        self.epoch: int | None = None
        self._entries: OrderedDict[str, Cached[E, D]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, entity: str) -> Cached[E, D] | None:
        entry = self._entries.get(entity)
        if entry is not None:
            self._entries.move_to_end(entity)
        return entry

    def peek(self, entity: str) -> Cached[E, D] | None:
        """The entry, without touching its recency."""
        return self._entries.get(entity)

    def put(self, entity: str, history: list[E], derived: D) -> None:
        old = self._entries.pop(entity, None)
        if old is not None:
            self.events -= len(old.history)
        if len(history) > self.max_events:
            return
        self._entries[entity] = Cached(history, derived)
        self.events += len(history)
        while self.events > self.max_events:
            _, evicted = self._entries.popitem(last=False)
            self.events -= len(evicted.history)

    def at_epoch(self, epoch: int) -> None:
        """The store's epoch now; a different one than before empties the cache."""
        if epoch != self.epoch:
            self.clear()
            self.epoch = epoch

    def clear(self) -> None:
        self._entries.clear()
        self.events = 0
