"""What every benchmark shares: the backends, throwaway databases, topic pre-loading,
consumer-group progress, child processes and their peak memory.

PostgreSQL is 127.0.0.1:5432 (user postgres, trust) when it answers, else an
embedded server; the broker is always an embedded Tansu (in memory), so a run
never touches anyone's topics. Every database a run creates is named
``fm_bench_*`` and dropped at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import psutil
import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from psycopg import sql

from infra.db import migrate
from infra.kafka import ensure_topics

REPO = Path(__file__).resolve().parents[1]
LOCAL_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
PARTITIONS = 4


@dataclass
class Backends:
    pg_server: str  # a DSN on which databases may be created
    bootstrap: str
    pg_kind: str
    home: Path
    databases: list[str] = field(default_factory=list)

    def create_database(self, label: str, *, migrated: bool = True) -> str:
        name = f"fm_bench_{label}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self.pg_server, autocommit=True) as conn:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        self.databases.append(name)
        dsn = with_database(self.pg_server, name)
        if migrated:
            migrate(dsn)
        return dsn

    def drop_databases(self) -> None:
        with psycopg.connect(self.pg_server, autocommit=True) as conn:
            for name in self.databases:
                conn.execute(
                    sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
                )
        self.databases.clear()


def with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


def _local_postgres() -> bool:
    try:
        with psycopg.connect(LOCAL_PG, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


@contextmanager
def backends() -> Iterator[Backends]:
    from infra.embedded import EmbeddedBroker, EmbeddedPostgres

    home = Path(tempfile.mkdtemp(prefix="fm-bench-"))
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, home, ignore_errors=True)
        if _local_postgres():
            pg_server, kind = LOCAL_PG, "local PostgreSQL 127.0.0.1:5432"
        else:
            pg = stack.enter_context(EmbeddedPostgres(home / "pg"))
            pg_server, kind = pg.dsn_for("postgres"), "embedded PostgreSQL"
        broker = stack.enter_context(EmbeddedBroker(home / "tansu"))
        found = Backends(pg_server=pg_server, bootstrap=broker.bootstrap, pg_kind=kind, home=home)
        try:
            yield found
        finally:
            found.drop_databases()


def server_version(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("show server_version").fetchone()
    return str(row[0]) if row else "?"


# -- topics -------------------------------------------------------------------


async def preload(
    bootstrap: str, records: Iterable[tuple[bytes, bytes]], topics: list[tuple[str, int]]
) -> int:
    """Produce ``records`` to each topic: ``(name, how many of the first records)``."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks=1,
        linger_ms=20,
        max_batch_size=512 * 1024,
        enable_idempotence=False,
        request_timeout_ms=60_000,
    )
    await producer.start()
    sent = 0
    try:
        pending: list[Any] = []
        for i, (key, value) in enumerate(records):
            for name, limit in topics:
                if i < limit:
                    pending.append(await producer.send(name, value, key=key))
            sent += 1
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


async def create_topics(bootstrap: str, names: Iterable[str]) -> None:
    await ensure_topics(bootstrap, list(names), partitions=PARTITIONS)


async def partitions(bootstrap: str, topic: str) -> list[TopicPartition]:
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await probe.start()
    try:
        await probe.topics()
        return [TopicPartition(topic, p) for p in sorted(probe.partitions_for_topic(topic) or ())]
    finally:
        await probe.stop()


class GroupProgress:
    """How far a consumer group has committed on one topic, against a known record count.

    The count is what was produced, not the end offsets: Tansu 0.6 answers
    ListOffsets(latest) with a figure below the real end when the last produce
    request carried a batch of several records.
    """

    def __init__(self, bootstrap: str, group: str, tps: list[TopicPartition], total: int) -> None:
        self.group, self.tps, self.total = group, tps, total
        self._admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)

    async def __aenter__(self) -> GroupProgress:
        await self._admin.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._admin.close()

    async def committed(self) -> int:
        try:
            offsets = await self._admin.list_consumer_group_offsets(self.group, partitions=self.tps)
        except Exception:  # the group does not exist until its first join
            return 0
        return sum(max(meta.offset, 0) for tp, meta in offsets.items() if tp in self.tps)

    async def wait_done(
        self,
        proc: Child,
        timeout: float,
        on_progress: Callable[[float, int], None] | None = None,
        interval: float = 0.1,
    ) -> tuple[float | None, int]:
        """Seconds since ``proc`` started until the group committed everything (None on timeout)."""
        deadline = time.monotonic() + timeout
        done = 0
        while time.monotonic() < deadline:
            done = await self.committed()
            elapsed = time.monotonic() - proc.started
            if on_progress is not None:
                on_progress(elapsed, done)
            if done >= self.total:
                return elapsed, done
            if proc.popen.poll() is not None:
                raise RuntimeError(
                    f"{proc.name} exited early ({proc.popen.returncode}):\n{proc.tail()}"
                )
            await asyncio.sleep(interval)
        return None, done


# -- child processes ------------------------------------------------------------


class Child:
    """A benchmark participant in its own OS process, with its peak RSS watched."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        log_dir: Path,
        *,
        capture: bool = False,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.started = time.monotonic()
        self.started_unix = time.time()
        self.popen = subprocess.Popen(
            argv,
            cwd=REPO,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else self._log,
            stderr=self._log,
        )
        self.peak_rss = 0
        self.cpu_s = 0.0  # the child's own CPU time (user + system) at the last sample
        self._ps = psutil.Process(self.popen.pid)

    def sample(self) -> int:
        """Peak RSS so far, in bytes: the kernel's high-water mark (VmHWM)."""
        with contextlib.suppress(psutil.Error, OSError):
            times = self._ps.cpu_times()
            self.cpu_s = times.user + times.system
            status = Path(f"/proc/{self.popen.pid}/status").read_text()
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_rss = max(self.peak_rss, int(line.split()[1]) * 1024)
                    return self.peak_rss
            self.peak_rss = max(self.peak_rss, self._ps.memory_info().rss)
        return self.peak_rss

    def rss_now(self) -> int:
        """Resident set size now, in bytes (0 once the process is gone)."""
        try:
            return int(self._ps.memory_info().rss)
        except psutil.Error:
            return 0

    def output(self, timeout: float) -> str:
        """Wait for the child to finish on its own (killed after ``timeout``); its stdout."""
        try:
            out, _ = self.popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            out, _ = self.popen.communicate()
        self._log.close()
        return out.decode()

    def last_json(self, timeout: float) -> dict[str, Any]:
        """The last JSON line the child printed before it finished or was killed."""
        lines = [line for line in self.output(timeout).splitlines() if line.startswith("{")]
        if not lines:
            return {"error": f"{self.name} printed no result; log {self.log_path}:\n{self.tail()}"}
        result: dict[str, Any] = orjson.loads(lines[-1])
        return result

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is None:
            self.sample()
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def python_child(
    name: str,
    module: str,
    args: list[str],
    log_dir: Path,
    env: dict[str, str] | None = None,
    python: str | None = None,
) -> Child:
    """A bench module in its own process (``python``: another interpreter, e.g. the
    Faust peer's venv); it prints its result as JSON on stdout."""
    argv = [python or sys.executable, "-m", module, *args]
    return Child(name, argv, env or {}, log_dir, capture=True)


def flowmetrics_env(dsn: str, bootstrap: str, prefix: str, **extra: str) -> dict[str, str]:
    """The FLOW_* environment of a ``flowmetrics`` service against the bench backends."""
    return {
        "FLOW_ENV": "development",
        "FLOW_DATABASE_URL": dsn,
        "FLOW_KAFKA_BOOTSTRAP": bootstrap,
        "FLOW_TOPIC_PREFIX": prefix,
        "FLOW_CONSUMER_GROUP": f"{prefix}-processor",
        "FLOW_KAFKA_IDEMPOTENT_PRODUCER": "0",
        "FLOW_LOG_LEVEL": "WARNING",
        **extra,
    }


def flowmetrics_child(name: str, command: str, env: dict[str, str], log_dir: Path) -> Child:
    entry = Path(sys.executable).with_name("flowmetrics")
    argv = [str(entry), command] if entry.exists() else [sys.executable, "-m", "infra.cli", command]
    return Child(name, argv, env, log_dir)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]
