"""The embedded broker and PostgreSQL start, serve a real client, and leave nothing behind."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from infra.embedded import EmbeddedBroker, EmbeddedPostgres, PostgresStartError

pytestmark = pytest.mark.integration


def _processes_mentioning(text: str) -> list[str]:
    listing = subprocess.run(
        ["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True
    )
    return [line for line in listing.stdout.splitlines() if text in line]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(tmp_path) as running:
        yield running


async def test_broker_round_trips_a_message_and_exits_on_stop(broker: EmbeddedBroker) -> None:
    """A topic created with the admin client carries a keyed message from producer to consumer."""
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic("embedded-smoke", 1, 1)])
    finally:
        await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait("embedded-smoke", b"hello", key=b"k1")
    finally:
        await producer.stop()

    # Tansu holds a new group's first JoinGroup for session_timeout/2: keep it short.
    consumer = AIOKafkaConsumer(
        "embedded-smoke", bootstrap_servers=broker.bootstrap, group_id="embedded-smoke",
        auto_offset_reset="earliest", session_timeout_ms=3000, heartbeat_interval_ms=1000,
    )  # fmt: skip
    await consumer.start()
    try:
        message = await consumer.getone()
    finally:
        await consumer.stop()
    assert (message.key, message.value) == (b"k1", b"hello")

    pid = broker.pid
    assert pid is not None
    broker.stop()
    assert not _alive(pid)
    assert _processes_mentioning(broker.bootstrap) == []


def test_broker_log_goes_to_its_file(broker: EmbeddedBroker) -> None:
    """The broker writes to its log file, not to our terminal."""
    assert broker.bootstrap in broker.log_path.read_text()


def test_postgres_serves_restarts_on_same_folder_and_leaves_no_process(tmp_path: Path) -> None:
    """A second start reuses the data folder; after stop no server holds it."""
    embedded = EmbeddedPostgres(tmp_path / "home")
    for round_ in range(2):
        with embedded, psycopg.connect(embedded.dsn) as conn:
            assert embedded.pid is not None and _alive(embedded.pid)
            assert conn.execute("SELECT 1, current_database()").fetchone() == (1, "flowmetrics")
            conn.execute("CREATE TABLE IF NOT EXISTS kept (round int)")
            conn.execute("INSERT INTO kept VALUES (%s)", (round_,))
            conn.commit()
        assert _processes_mentioning(str(embedded.data_dir)) == []

    with embedded, psycopg.connect(embedded.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM kept").fetchone() == (2,)
    assert _processes_mentioning(str(embedded.data_dir)) == []


def test_postgres_start_error_names_the_log(tmp_path: Path) -> None:
    """A failed start says where its log is."""
    embedded = EmbeddedPostgres(tmp_path, start_timeout=5)
    embedded.data_dir.mkdir()
    (embedded.data_dir / "not-a-cluster").write_text("x")  # initdb refuses a non-empty folder
    with pytest.raises(PostgresStartError, match=re.escape(str(embedded.log_path))):
        embedded.start()
    assert os.path.exists(embedded.log_path)
