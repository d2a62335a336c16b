"""Kafka plumbing: producer/consumer/admin factories and topic creation.

aiokafka errors are translated into :class:`BrokerUnavailable` at this edge.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import IncompatibleBrokerVersion, KafkaError, TopicAlreadyExistsError, for_code

from infra.topic_config import TopicSpec, configs_to_apply, topic_overrides

log = structlog.get_logger("kafka")


class BrokerError(Exception):
    """Base of this module's errors."""


class BrokerUnavailable(BrokerError):
    """The broker could not be reached or did not acknowledge in time."""


def make_producer(bootstrap: str, *, idempotent: bool = True, **kwargs: Any) -> AIOKafkaProducer:
    # acks=all + idempotence: an acknowledged write is on every in-sync replica
    # and a retried send is not duplicated in the log. Tansu (the embedded
    # broker) answers InitProducerId with UnknownError, so the embedded runtime
    # turns idempotence off; a duplicate from a producer retry is then still
    # harmless, because the processor folds by event_id.
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "acks": "all",
        "enable_idempotence": idempotent,
        "linger_ms": 5,
        # A raw record wraps a webhook body of up to 1 MiB with its headers; the
        # raw and DLQ topics accept 4 MiB records (infra/topic_config.py).
        "max_request_size": 4 * 1024 * 1024,
        "request_timeout_ms": 10_000,
        "compression_type": None,
    }
    options.update(kwargs)
    return AIOKafkaProducer(**options)


def make_consumer(bootstrap: str, group_id: str, *topics: str, **kwargs: Any) -> AIOKafkaConsumer:
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_partition_fetch_bytes": 8 * 1024 * 1024,
        "fetch_max_bytes": 64 * 1024 * 1024,
    }
    options.update(kwargs)
    return AIOKafkaConsumer(*topics, **options)


async def ensure_topics(
    bootstrap: str,
    names: Iterable[str],
    *,
    partitions: int = 4,
    specs: Mapping[str, TopicSpec] | None = None,
    attempts: int = 30,
) -> None:
    """Create the topics that do not exist yet, retrying while the broker starts.

    With ``specs`` (topic name -> :class:`~infra.topic_config.TopicSpec`), a
    missing topic is created with its spec, and an existing one gets its
    configs brought to the spec (see :func:`_reconcile_topics`).
    """
    wanted = list(names)
    specs = specs or {}
    delay = 0.05
    for attempt in range(attempts):
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [n for n in wanted if n not in existing]
            if missing:
                with contextlib.suppress(TopicAlreadyExistsError):
                    response = await admin.create_topics(
                        [_new_topic(n, specs.get(n), partitions) for n in missing]
                    )
                    _raise_for_topic_errors(response.to_object()["topic_errors"], "create")
            present = [n for n in wanted if n in existing and n in specs]
            if present:
                await _reconcile_topics(admin, present, specs)
            return
        except KafkaError as exc:
            if attempt == attempts - 1:
                raise BrokerUnavailable(f"cannot create topics on {bootstrap}: {exc!r}") from exc
        finally:
            await admin.close()
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


def _new_topic(name: str, spec: TopicSpec | None, partitions: int) -> NewTopic:
    if spec is None:
        return NewTopic(name, num_partitions=partitions, replication_factor=1)
    return NewTopic(
        name,
        num_partitions=spec.partitions,
        replication_factor=spec.replication_factor,
        topic_configs=dict(spec.configs),
    )


def _raise_for_topic_errors(results: Iterable[Mapping[str, Any]], action: str) -> None:
    """Per-topic errors come back in the response, not as exceptions."""
    for result in results:
        code = result.get("error_code", 0)
        if code in (0, TopicAlreadyExistsError.errno):
            continue
        error = for_code(code)
        name = result.get("topic") or result.get("resource_name")
        detail = f"{action} {name}: {error.__name__}: {result.get('error_message')}"
        if error.retriable:
            raise error(detail)  # the caller's retry loop takes it
        raise BrokerError(detail)


async def _reconcile_topics(
    admin: AIOKafkaAdminClient, names: list[str], specs: Mapping[str, TopicSpec]
) -> None:
    """Bring existing topics' configs to their specs; report partitions below spec.

    Best effort: a broker without DescribeConfigs/AlterConfigs (the embedded
    Tansu) keeps the configs it has, with a warning.
    """
    try:
        for topic in await admin.describe_topics(names):
            spec = specs[topic["topic"]]
            if len(topic["partitions"]) < spec.partitions:
                log.warning(
                    "topic_partitions_below_spec",
                    topic=topic["topic"],
                    partitions=len(topic["partitions"]),
                    spec=spec.partitions,
                )
        described = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, n) for n in names]
        )
        changes = []
        for response in described:
            for resource in response.to_object()["resources"]:
                name = resource["resource_name"]
                update = configs_to_apply(specs[name], topic_overrides(resource))
                if update is not None:
                    changes.append(ConfigResource(ConfigResourceType.TOPIC, name, update))
        if changes:
            for response in await admin.alter_configs(changes):
                _raise_for_topic_errors(response.to_object()["resources"], "alter configs of")
            log.info("topic_configs_applied", topics=[c.name for c in changes])
    except IncompatibleBrokerVersion as exc:
        # Brokers without DescribeConfigs/AlterConfigs (the embedded Tansu): expected.
        log.info("topic_configs_unsupported_by_broker", topics=names, error=repr(exc))
    except KafkaError as exc:
        log.warning("topic_configs_not_reconciled", topics=names, error=repr(exc))
