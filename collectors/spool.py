"""The collector's durable local spool: accepted deliveries kept on disk, in order.

A delivery is the group of Kafka records one accepted request produces (its raw
record, its canonical events, or a dead letter). The spool holds a delivery in
one of two states:

- **pending** — not yet in Kafka (the broker was down or slow when it was
  accepted). The drainer publishes pending deliveries in ``seq`` order.
- **unconfirmed** — in Kafka, acknowledged at the listed events-topic
  partitions/offsets, but the processor's consumer group has not committed past
  them yet. Kept so that a broker that loses acknowledged records (a
  memory-only broker restarting) costs nothing: they are requeued and
  published again; stable event ids make the second copy harmless.

Storage is one SQLite database in WAL mode with ``synchronous=FULL``: a
commit returns after the WAL is fsync'd, so an appended delivery survives a
crash or power loss (docs/adr/0002-collector-spool.md has the measurement).
The database is opened in exclusive locking mode, so two collectors cannot
share one spool by accident.

The class is synchronous and not thread-safe: the async side
(:mod:`collectors.durable_publisher`) calls it from one dedicated thread.

Exceptions::

    SpoolError          the spool cannot be opened, read or written
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Role = Literal["raw", "events", "dlq"]
ROLES: tuple[Role, ...] = ("raw", "events", "dlq")

PENDING = 0
UNCONFIRMED = 1
SCHEMA_VERSION = 1

_SCHEMA = """
create table if not exists deliveries (
    seq        integer primary key autoincrement,
    state      integer not null,
    spooled_at real not null
);
create index if not exists deliveries_state_idx on deliveries (state, seq);
create table if not exists records (
    seq   integer not null references deliveries (seq) on delete cascade,
    n     integer not null,
    role  text not null,
    key   blob,
    value blob not null,
    primary key (seq, n)
);
create table if not exists acks (
    seq       integer not null references deliveries (seq) on delete cascade,
    part      integer not null,
    position  integer not null
);
create index if not exists acks_seq_idx on acks (seq);
create table if not exists meta (name text primary key, value text not null);
"""


class SpoolError(Exception):
    """The spool cannot be opened, read or written (disk full, permissions, corruption)."""


@dataclass(frozen=True)
class SpooledRecord:
    role: Role
    key: bytes | None
    value: bytes


@dataclass(frozen=True)
class SpooledDelivery:
    seq: int
    records: tuple[SpooledRecord, ...]
    spooled_at: float


@dataclass(frozen=True)
class SpoolCounts:
    pending: int
    unconfirmed: int


# (partition, offset) of one events-topic record as the broker acknowledged it.
Ack = tuple[int, int]


class Spool:
    """``namespace`` (the topic prefix) is recorded at creation: a spool never hands its
    deliveries to another deployment's topics."""

    def __init__(self, path: Path, namespace: str = "") -> None:
        self.path = Path(path)
        self.namespace = namespace
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=0.2
            )
        except (sqlite3.Error, OSError) as exc:
            raise SpoolError(f"{self.path}: {exc}") from exc
        try:
            self._open()
        except BaseException:
            self._db.close()  # releases the exclusive lock
            raise

    def _open(self) -> None:
        try:
            self._db.execute("pragma locking_mode = exclusive")
            mode = self._db.execute("pragma journal_mode = wal").fetchone()[0]
            if mode != "wal":
                raise SpoolError(f"{self.path}: cannot use WAL mode (got {mode!r})")
            self._db.execute("pragma synchronous = full")
            self._db.execute("pragma foreign_keys = on")
            with self._transaction():
                version = self._db.execute("pragma user_version").fetchone()[0]
                if version not in (0, SCHEMA_VERSION):
                    raise SpoolError(f"{self.path}: spool schema {version} is newer than ours")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"pragma user_version = {SCHEMA_VERSION}")
                self._db.execute(
                    "insert into meta values ('namespace', ?) on conflict do nothing",
                    (self.namespace,),
                )
                owner = self._db.execute(
                    "select value from meta where name = 'namespace'"
                ).fetchone()[0]
            if owner != self.namespace:
                raise SpoolError(
                    f"{self.path} holds deliveries for topic prefix {owner!r}, "
                    f"not {self.namespace!r}"
                )
            self._counts = self._count()
        except sqlite3.Error as exc:
            raise SpoolError(f"{self.path}: {exc}") from exc

    # -- writing ----------------------------------------------------------------

    def append(self, records: Sequence[SpooledRecord], *, acks: Sequence[Ack] | None = None) -> int:
        """Make a delivery durable; ``acks`` given means it is already in Kafka (unconfirmed).

        Returns its ``seq`` once the write is fsync'd.
        """
        if not records:
            raise ValueError("a delivery has at least one record")
        state = PENDING if acks is None else UNCONFIRMED
        try:
            with self._transaction():
                cur = self._db.execute(
                    "insert into deliveries (state, spooled_at) values (?, ?)",
                    (state, time.time()),
                )
                seq = int(cur.lastrowid or 0)
                self._db.executemany(
                    "insert into records (seq, n, role, key, value) values (?, ?, ?, ?, ?)",
                    [(seq, n, r.role, r.key, r.value) for n, r in enumerate(records)],
                )
                if acks:
                    self._db.executemany(
                        "insert into acks (seq, part, position) values (?, ?, ?)",
                        [(seq, p, o) for p, o in acks],
                    )
        except sqlite3.Error as exc:
            raise SpoolError(f"{self.path}: cannot append: {exc}") from exc
        self._counts = _add(self._counts, pending=int(acks is None), unconfirmed=int(bool(acks)))
        return seq

    def mark_published(self, published: Mapping[int, Sequence[Ack]]) -> None:
        """Pending deliveries are in Kafka now; those with events wait for the processor."""
        if not published:
            return
        try:
            with self._transaction():
                for seq, acks in published.items():
                    if acks:
                        self._db.execute(
                            "update deliveries set state = ? where seq = ?", (UNCONFIRMED, seq)
                        )
                        self._db.executemany(
                            "insert into acks (seq, part, position) values (?, ?, ?)",
                            [(seq, p, o) for p, o in acks],
                        )
                    else:  # nothing the processor will confirm: done once in Kafka
                        self._db.execute("delete from deliveries where seq = ?", (seq,))
            self._counts = self._count()
        except sqlite3.Error as exc:
            raise SpoolError(f"{self.path}: cannot mark published: {exc}") from exc

    def trim_confirmed(self, committed: Mapping[int, int]) -> int:
        """Forget unconfirmed deliveries whose every events record is below the group's
        committed offset of its partition; returns how many were forgotten."""
        try:
            with self._transaction():
                self._db.execute(
                    "create temp table if not exists committed "
                    "(part integer primary key, next_offset integer not null)"
                )
                self._db.execute("delete from committed")
                self._db.executemany(
                    "insert into committed values (?, ?)", sorted(committed.items())
                )
                cur = self._db.execute(
                    """
                    delete from deliveries where state = ? and not exists (
                        select 1 from acks a left join committed c on c.part = a.part
                        where a.seq = deliveries.seq
                          and (c.next_offset is null or a.position >= c.next_offset))
                    """,
                    (UNCONFIRMED,),
                )
                trimmed = cur.rowcount
        except sqlite3.Error as exc:
            raise SpoolError(f"{self.path}: cannot trim: {exc}") from exc
        if trimmed:
            self._counts = _add(self._counts, unconfirmed=-trimmed)
        return trimmed

    def requeue_unconfirmed(self) -> int:
        """The broker may have lost what it acknowledged: make it all pending again."""
        try:
            with self._transaction():
                self._db.execute("delete from acks")
                cur = self._db.execute(
                    "update deliveries set state = ? where state = ?", (PENDING, UNCONFIRMED)
                )
                requeued = cur.rowcount
        except sqlite3.Error as exc:
            raise SpoolError(f"{self.path}: cannot requeue: {exc}") from exc
        self._counts = _add(self._counts, pending=requeued, unconfirmed=-requeued)
        return requeued

    # -- reading ----------------------------------------------------------------

    def pending(self, limit: int) -> list[SpooledDelivery]:
        """The oldest pending deliveries, in the order they were accepted."""
        try:
            rows = self._db.execute(
                """
                select d.seq, d.spooled_at, r.role, r.key, r.value
                from (select seq, spooled_at from deliveries where state = ?
                      order by seq limit ?) d
                join records r on r.seq = d.seq
                order by d.seq, r.n
                """,
                (PENDING, limit),
            ).fetchall()
        except sqlite3.Error as exc:
            raise SpoolError(f"{self.path}: cannot read: {exc}") from exc
        return _group(rows)

    @property
    def counts(self) -> SpoolCounts:
        """Pending and unconfirmed deliveries (kept in memory; exact after every call)."""
        return self._counts

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def _count(self) -> SpoolCounts:
        rows = dict(
            self._db.execute("select state, count(*) from deliveries group by state").fetchall()
        )
        return SpoolCounts(pending=rows.get(PENDING, 0), unconfirmed=rows.get(UNCONFIRMED, 0))


class _Transaction:
    """``begin immediate`` … ``commit`` (fsync'd by synchronous=FULL), rollback on error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("begin immediate")

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.db.execute("commit")
        elif self.db.in_transaction:
            self.db.execute("rollback")


def _add(counts: SpoolCounts, *, pending: int = 0, unconfirmed: int = 0) -> SpoolCounts:
    return SpoolCounts(counts.pending + pending, counts.unconfirmed + unconfirmed)


def _group(rows: Iterable[tuple[int, float, str, bytes | None, bytes]]) -> list[SpooledDelivery]:
    grouped: dict[int, tuple[float, list[SpooledRecord]]] = {}
    for seq, spooled_at, role, key, value in rows:
        if role not in ROLES:
            raise SpoolError(f"delivery {seq} has a record of unknown role {role!r}")
        entry = grouped.setdefault(seq, (spooled_at, []))
        entry[1].append(SpooledRecord(role, key, value))
    return [SpooledDelivery(seq, tuple(recs), at) for seq, (at, recs) in grouped.items()]
