"""What the fault tests share: database snapshots, a TCP proxy to cut PostgreSQL off,
a processor in its own OS process, producing a stream and watching a group's offsets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import psycopg
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from psycopg import sql

# Every table a projection writes (those that exist: DORA and analytics are optional).
DERIVED_TABLES = (
    "work_items", "transitions", "stage_intervals", "completions", "deployments",
    "production_deployments", "deployment_changes", "incidents", "stage_arrivals",
    "daily_cfd_arrivals", "cfd_arrival_totals", "stage_catalog",
)  # fmt: skip
# Counter tables updated by deltas keep a row whose count went back to 0; whether such
# a row exists depends on how events were batched, not on the events. Compared without
# those rows (their number is reported by ``zero_counters``).
COUNTERS = {"daily_cfd_arrivals": "arrivals", "cfd_arrival_totals": "arrivals"}

Snapshot = dict[str, tuple[int, str]]


def snapshot(dsn: str) -> Snapshot:
    """Row count and an md5 over every row (in a fixed order) of each derived table, and
    of the events table without ``ingested_at`` (when a row was written, not what it is)."""
    result: Snapshot = {}
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "select count(*), md5(coalesce(string_agg(concat_ws('|', event_id, type, source, "
            "projection, entity, occurred_at, received_at, payload::text), ',' "
            "order by event_id), '')) from events"
        ).fetchone()
        assert row is not None
        result["events"] = (row[0], row[1])
        for table in DERIVED_TABLES:
            exists = conn.execute("select to_regclass(%s)", (table,)).fetchone()
            if exists is None or exists[0] is None:
                continue
            where = f"where {COUNTERS[table]} <> 0" if table in COUNTERS else ""
            row = conn.execute(
                f"select count(*), md5(coalesce(string_agg(t::text, ',' order by t::text), '')) "
                f"from {table} t {where}"
            ).fetchone()
            assert row is not None
            result[table] = (row[0], row[1])
    return result


def zero_counters(dsn: str) -> dict[str, int]:
    """Rows of the counter tables whose count is 0 (see ``COUNTERS``)."""
    found = {}
    with psycopg.connect(dsn) as conn:
        for table, column in COUNTERS.items():
            exists = conn.execute("select to_regclass(%s)", (table,)).fetchone()
            if exists is not None and exists[0] is not None:
                row = conn.execute(f"select count(*) from {table} where {column} = 0").fetchone()
                found[table] = row[0] if row else 0
    return found


def row_diff(dsn_a: str, dsn_b: str, table: str, limit: int = 10) -> str:
    """The rows only one side has (for a failure message)."""
    rows = []
    for dsn in (dsn_a, dsn_b):
        with psycopg.connect(dsn) as conn:
            rows.append({r[0] for r in conn.execute(f"select t::text from {table} t")})
    only_a, only_b = sorted(rows[0] - rows[1])[:limit], sorted(rows[1] - rows[0])[:limit]
    return "\n".join([*(f"  - {r}" for r in only_a), *(f"  + {r}" for r in only_b)])


@contextmanager
def database_copy(server_dsn: str, template: str) -> Iterator[str]:
    """One more fresh, migrated database (a copy of the session's template)."""
    name = f"fm_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("create database {} template {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
    try:
        yield urlunsplit(urlsplit(server_dsn)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )


def server_now(dsn: str) -> Any:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("select clock_timestamp()").fetchone()
        assert row is not None
        return row[0]


def folding_since(dsn: str, since: Any) -> bool:
    """A connection opened after ``since`` is inside a processor fold transaction
    (``incoming`` is the temp table every fold starts with)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "select count(*) from pg_stat_activity where datname = current_database() "
            "and pid <> pg_backend_pid() and backend_start > %s "
            "and xact_start is not null and query ilike %s",
            (since, "%incoming%"),
        ).fetchone()
    return bool(row and row[0])


def counts(snap: Snapshot) -> dict[str, int]:
    return {table: n for table, (n, _) in snap.items()}


async def produce(bootstrap: str, topic: str, records: Iterable[tuple[bytes, bytes]]) -> int:
    """Every record acknowledged (acks=all); returns how many."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20,
                                max_batch_size=512 * 1024, enable_idempotence=False,
                                request_timeout_ms=60_000)  # fmt: skip
    await producer.start()
    sent = 0
    try:
        pending: list[Any] = []
        for key, value in records:
            pending.append(await producer.send(topic, value, key=key))
            sent += 1
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


class GroupOffsets:
    """A consumer group's committed offsets on one topic (summed: records folded, when
    the topic was fresh)."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int) -> None:
        self.group = group
        self.tps = [TopicPartition(topic, p) for p in range(partitions)]
        self._admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)

    async def __aenter__(self) -> GroupOffsets:
        await self._admin.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._admin.close()

    async def by_partition(self) -> dict[int, int]:
        try:
            offsets = await self._admin.list_consumer_group_offsets(self.group, partitions=self.tps)
        except Exception:  # the group does not exist before its first join
            return {}
        return {tp.partition: max(meta.offset, 0) for tp, meta in offsets.items()}

    async def total(self) -> int:
        return sum((await self.by_partition()).values())


class TcpProxy:
    """127.0.0.1:<port> → target, to take a server away from one client and give it back.

    ``cut()`` resets every open connection and, until ``restore()``, accepts and at
    once closes new ones (counted in ``refused``): to the client the server is gone.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.up = True
        self.refused = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> None:
        self.up = False
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        self.up = True

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer),
                             return_exceptions=True)  # fmt: skip
        self._writers -= {writer, up_writer}
        for w in (writer, up_writer):
            w.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()


class ProcessorProcess:
    """``flowmetrics process`` as a real OS process, to be SIGKILLed."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.env = {**os.environ, **env}
        self.log_path = log_dir / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        binary = Path(sys.executable).parent / "flowmetrics"
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                [str(binary), "process"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self.starts += 1

    def kill(self) -> None:
        assert self.popen is not None
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait()

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def check_alive(self) -> None:
        assert self.popen is not None
        if self.popen.poll() is not None:
            tail = self.log_path.read_text(errors="replace").splitlines()[-20:]
            raise AssertionError(f"{self.name} exited ({self.popen.returncode}):\n"
                                 + "\n".join(tail))  # fmt: skip


def processor_env(dsn: str, bootstrap: str, prefix: str, group: str, home: Path) -> dict[str, str]:
    return {
        "FLOW_ENV": "development",
        "FLOW_HOME": str(home),
        "FLOW_DATABASE_URL": dsn,
        "FLOW_KAFKA_BOOTSTRAP": bootstrap,
        "FLOW_TOPIC_PREFIX": prefix,
        "FLOW_CONSUMER_GROUP": group,
        "FLOW_KAFKA_IDEMPOTENT_PRODUCER": "0",
        "FLOW_CONSUMER_SESSION_TIMEOUT_MS": "2000",
        "FLOW_PROCESSOR_POLL_MS": "50",
        "FLOW_PROCESSOR_BATCH_MAX": "2000",
        "FLOW_LOG_LEVEL": "WARNING",
    }


def elapsed(since: float) -> float:
    return round(time.monotonic() - since, 1)


def json_line(value: Any) -> str:
    return orjson.dumps(value).decode()
