"""The testcontainers path: Apache Kafka and TimescaleDB in containers.

``FLOW_TEST_BACKEND=containers pytest tests/integration tests/e2e`` runs the
whole suite against the images docker-compose.yml runs (tests/conftest.py
starts them). The tests here check what only those servers can show: the
TimescaleDB path of the migrations and the topic configuration on a real
Apache Kafka. Without a Docker engine they are skipped, and the skip says why.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from infra.kafka import ensure_topics
from infra.topic_config import topic_specs
from schemas.topics import Topics

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

needs_containers = pytest.mark.skipif(
    os.environ.get("FLOW_TEST_BACKEND") != "containers",
    reason="needs FLOW_TEST_BACKEND=containers (Kafka and TimescaleDB containers; Docker engine)",
)


def test_without_a_docker_engine_the_containers_backend_skips_with_the_reason() -> None:
    """FLOW_TEST_BACKEND=containers with no engine to talk to skips, naming the missing engine."""
    env = {
        **os.environ,
        "FLOW_TEST_BACKEND": "containers",
        "DOCKER_HOST": "unix:///nonexistent/docker.sock",
    }
    target = f"{Path(__file__).relative_to(ROOT)}::test_kafka_applies_the_topic_configuration"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", target, "-rs", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout
    # Either reason is right: no docker client library installed, or no engine
    # at the configured address.
    assert re.search(
        r"FLOW_TEST_BACKEND=containers, but (no Docker engine answers at "
        r"unix:///nonexistent/docker\.sock|docker is not installed)",
        result.stdout,
    ), result.stdout


@needs_containers
def test_timescaledb_runs_the_hypertable_path(db_dsn: str) -> None:
    """On TimescaleDB the migrations create the extension, hypertables and continuous aggregates."""
    with psycopg.connect(db_dsn) as conn:
        assert conn.execute("select 1 from pg_extension where extname = 'timescaledb'").fetchone()
        hypertables = {
            row[0]
            for row in conn.execute(
                "select hypertable_name from timescaledb_information.hypertables"
            )
        }
        aggregates = conn.execute(
            "select count(*) from timescaledb_information.continuous_aggregates"
        ).fetchone()
    assert {"transitions", "completions"} <= hypertables
    assert aggregates is not None and aggregates[0] > 0


async def _topic_configs(bootstrap: str, names: list[str]) -> dict[str, dict[str, Any]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        )
        partitions = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(names)}
    finally:
        await admin.close()
    result: dict[str, dict[str, Any]] = {}
    for response in described:
        for resource in response.to_object()["resources"]:
            entries = {e["config_names"]: e["config_value"] for e in resource["config_entries"]}
            result[resource["resource_name"]] = {
                "partitions": partitions[resource["resource_name"]],
                **entries,
            }
    return result


async def _alter(bootstrap: str, topic: str, configs: dict[str, str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs)])
    finally:
        await admin.close()


@needs_containers
async def test_kafka_applies_the_topic_configuration(kafka_bootstrap: str) -> None:
    """migrate's topic specs land on Apache Kafka, and drift is put back (operator extras kept)."""
    topics = Topics(prefix=f"t{uuid.uuid4().hex[:12]}")
    specs = topic_specs(topics)
    await ensure_topics(kafka_bootstrap, topics.all(), specs=specs)

    found = await _topic_configs(kafka_bootstrap, list(topics.all()))
    for name, spec in specs.items():
        assert found[name]["partitions"] == spec.partitions
        for key, value in spec.configs.items():
            assert found[name][key] == value, (name, key)

    # Drift: someone shortened the events retention and added an override of their own.
    await _alter(kafka_bootstrap, topics.events, {"retention.ms": "60000", "segment.ms": "3600000"})
    await ensure_topics(kafka_bootstrap, topics.all(), specs=specs)
    events = (await _topic_configs(kafka_bootstrap, [topics.events]))[topics.events]
    assert events["retention.ms"] == specs[topics.events].configs["retention.ms"]
    assert events["segment.ms"] == "3600000"
