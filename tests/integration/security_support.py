"""Helpers of the security tests: the read-only role's DSN, API keys, DB snapshots."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from psycopg import sql

from api.auth import IssuedKey
from infra.api_keys_cli import create_api_key, revoke_api_key
from schemas.topics import Topics
from tests.pipeline import Pipeline, wait_for

API_ROLE = "flowmetrics_api"


def api_role_dsn(db_dsn: str) -> str:
    """``db_dsn`` as the API's role; skips the test when the server will not let it in
    (a server given by FLOW_TEST_DATABASE_URL may want a password for it)."""
    parts = urlsplit(db_dsn)
    host = parts.hostname or ""
    netloc = f"{API_ROLE}@{host}" + (f":{parts.port}" if parts.port else "")
    dsn = urlunsplit(parts._replace(netloc=netloc))
    try:
        with psycopg.connect(dsn, connect_timeout=3):
            pass
    except psycopg.OperationalError as exc:
        pytest.skip(f"cannot connect as {API_ROLE} without a password here: {exc}")
    return dsn


def new_api_key(db_dsn: str, name: str = "test") -> IssuedKey:
    with psycopg.connect(db_dsn) as conn:
        return create_api_key(conn, name)


def revoke(db_dsn: str, key_id: str) -> bool:
    with psycopg.connect(db_dsn) as conn:
        return revoke_api_key(conn, key_id)


def snapshot(db_dsn: str) -> dict[str, Any]:
    """Every base table of ``public``: its row count and an order-independent digest
    of its rows — equal snapshots mean nothing was written."""
    with psycopg.connect(db_dsn) as conn:
        tables = [
            name
            for (name,) in conn.execute(
                "select table_name from information_schema.tables "
                "where table_schema = 'public' and table_type = 'BASE TABLE' "
                "and table_name <> 'alembic_version' order by 1"
            )
        ]
        result: dict[str, Any] = {}
        for table in tables:
            query = sql.SQL(
                "select count(*), coalesce(sum(hashtext(t::text)::bigint), 0) from {} t"
            ).format(sql.Identifier(table))
            row = conn.execute(query).fetchone()
            result[table] = tuple(row) if row else None
        return result


async def end_offsets(bootstrap: str, topics: Topics) -> dict[str, int]:
    """Records ever written to the raw and the events topic (all partitions)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        result = {}
        for topic in (topics.raw, topics.events):
            partitions = consumer.partitions_for_topic(topic) or set()
            if not partitions:
                await consumer.topics()
                partitions = consumer.partitions_for_topic(topic) or set()
            ends = await consumer.end_offsets([TopicPartition(topic, n) for n in partitions])
            result[topic] = sum(ends.values())
        return result
    finally:
        await consumer.stop()


async def settle_fully(p: Pipeline, timeout: float = 90.0) -> None:
    """Until nothing waits in the collectors' spool (a 2xx may mean "spooled") and the
    processor has committed everything on the events topic."""

    async def drained() -> bool:
        state = (await p.collector.get("/ready")).json()
        return int(state.get("spool_depth", 0)) == 0

    await wait_for(drained, timeout=timeout, what="the collectors' spool to drain")
    await p.settle(timeout=timeout)
