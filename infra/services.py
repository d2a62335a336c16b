"""Wiring: builds each service from settings, in one place (cosmicpython's bootstrap).

Every service runs as a coroutine that stops cleanly when ``stop`` is set, so
``flowmetrics up`` can run all three in one process and production can run
each on its own (``flowmetrics collect | process | serve``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.app import create_api_app
from api.auth import ApiKeyAuth, RateLimiter, SqlKeyStore
from api.deps import configure_read_only
from collectors.app import CollectorConfig, create_collector_app
from collectors.durable_publisher import BrokerWatch, DurablePublisher
from collectors.github import GitHubMapping
from collectors.publisher import Publisher
from collectors.service_graph_scraper import DEFAULT_QUERY, ServiceGraphScraper
from infra.db import make_pool
from infra.kafka import ensure_topics, make_consumer, make_producer
from infra.services_catalog import load_catalog
from infra.settings import Settings
from infra.topic_config import topic_specs
from processor.consumer import Processor, tune_gc
from processor.dora import load_dora_config
from processor.dora_store import DoraProjection
from processor.projections import Projection, ProjectionRegistry
from processor.services_store import IncidentAttribution, ServicesProjection
from processor.stages import StageConfig, load_stage_config
from processor.work_item_store import WorkItemsProjection
from schemas.topics import Topics

log = structlog.get_logger("services")


@dataclass(frozen=True)
class Endpoints:
    """Where the running system's backing services are (embedded or external)."""

    database_url: str
    kafka_bootstrap: str


def topics_for(settings: Settings) -> Topics:
    return Topics(settings.topic_prefix)


def stage_config(settings: Settings) -> StageConfig:
    return load_stage_config(settings.stages_file)


def github_mapping(settings: Settings) -> GitHubMapping:
    """The one GitHub mapping of a deployment: webhooks, backfill and replay must
    name services and recognise incidents and deployments alike."""
    return GitHubMapping(
        incident_label=settings.github_incident_label,
        deploy_workflow_pattern=settings.github_deploy_workflow_pattern,
        workflow_environment=settings.github_workflow_environment,
        service_for_repo=load_catalog(settings.services_file).service_for_repo(),
    )


def projections(settings: Settings, stages: StageConfig) -> list[Projection]:
    """Every projection the processor folds into; a new domain registers here."""
    dora = load_dora_config(settings.dora_file)
    stale_after = timedelta(days=settings.service_edge_stale_days)
    attribution = IncidentAttribution(
        window=dora.incident_window,
        depth=settings.attribution_depth if settings.incident_attribution == "dependencies" else 0,
        stale_after=stale_after,
    )
    return [
        WorkItemsProjection(stages, cache_events=settings.processor_history_cache_events),
        DoraProjection(dora, attribution),
        ServicesProjection(attribution, stale_after),
    ]


def service_graph_scraper(settings: Settings, publisher: Publisher) -> ServiceGraphScraper:
    return ServiceGraphScraper(
        base_url=settings.prometheus_url,
        publisher=publisher,
        query=settings.prometheus_query or DEFAULT_QUERY,
        interval=settings.prometheus_interval_s,
        timeout=settings.prometheus_timeout_s,
    )


class _EmbeddableServer(uvicorn.Server):
    """A uvicorn server that leaves signals alone: the CLI owns SIGINT/SIGTERM and
    stops every service of the process together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_app(app: FastAPI, host: str, port: int, stop: asyncio.Event) -> None:
    server = _EmbeddableServer(
        uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    await task
    stopper.cancel()


def durable_publisher(settings: Settings, ends: Endpoints) -> DurablePublisher:
    """Kafka first, the local spool while the broker is down, slow or lost its data."""
    topics = topics_for(settings)
    bootstrap = ends.kafka_bootstrap

    async def recreate_topics() -> None:
        await ensure_topics(bootstrap, topics.all(), specs=topic_specs(topics), attempts=1)

    return DurablePublisher(
        spool_path=settings.spool_path or settings.home / "spool" / f"{topics.prefix}.db",
        topics=topics,
        producer_factory=lambda: make_producer(
            bootstrap, idempotent=settings.kafka_idempotent_producer
        ),
        ensure_topics=recreate_topics,
        watch=BrokerWatch(bootstrap, topics, settings.consumer_group),
        publish_timeout=settings.spool_publish_timeout_s,
        probe_interval=settings.spool_probe_interval_s,
        keep_until_folded=settings.spool_keep_until_folded,
    )


async def run_collectors(settings: Settings, ends: Endpoints, stop: asyncio.Event) -> None:
    # Starts without the broker: until it answers, deliveries go to the spool.
    catalog = load_catalog(settings.services_file)  # a bad file stops start-up here
    publisher = durable_publisher(settings, ends)
    await publisher.start()
    try:

        def secret(value: Any) -> str | None:
            return value.get_secret_value() if value is not None else None

        config = CollectorConfig(
            jira_secret=secret(settings.jira_webhook_secret),
            github_secret=secret(settings.github_webhook_secret),
            ingest_token=secret(settings.ingest_token),
            max_body_bytes=settings.max_body_bytes,
            max_batch_events=settings.max_batch_events,
        )
        app = create_collector_app(
            config,
            publisher,
            stage_config(settings),
            github_mapping(settings),
            readiness=publisher.readiness,
        )
        log.info("collectors_listening", port=settings.collector_port)
        if catalog.entries:  # durable before anything else is accepted: spooled if need be
            await publisher.publish(None, catalog.events(datetime.now(UTC)))
        work = [serve_app(app, settings.collector_host, settings.collector_port, stop)]
        if settings.prometheus_url:
            work.append(service_graph_scraper(settings, publisher).run(stop))
        await asyncio.gather(*work)
    finally:
        await publisher.stop()


async def run_processor(settings: Settings, ends: Endpoints, stop: asyncio.Event) -> None:
    tune_gc()
    topics = topics_for(settings)
    stages = stage_config(settings)
    session_ms = settings.consumer_session_timeout_ms
    consumer = make_consumer(
        ends.kafka_bootstrap,
        settings.consumer_group,
        topics.events,
        session_timeout_ms=session_ms,
        heartbeat_interval_ms=max(session_ms // 3, 100),
        # Partitions added to the events topic (a broker rebuilt with the spec's
        # count) are picked up within seconds, not aiokafka's default 5 minutes.
        metadata_max_age_ms=10_000,
    )
    producer = make_producer(ends.kafka_bootstrap, idempotent=settings.kafka_idempotent_producer)
    await producer.start()
    await consumer.start()
    try:
        processor = Processor(
            consumer=consumer,
            producer=producer,
            dsn=ends.database_url,
            registry=ProjectionRegistry(projections(settings, stages)),
            dlq_topic=topics.dlq,
            batch_max=settings.processor_batch_max,
            poll_ms=settings.processor_poll_ms,
            deferred=settings.processor_deferred_projections,
            deferred_min_interval_s=settings.processor_deferred_min_interval_s,
            deferred_cost_ratio=settings.processor_deferred_cost_ratio,
        )
        log.info("processor_consuming", topic=topics.events, group=settings.consumer_group)
        work = [processor.run(stop)]
        if settings.processor_metrics_port:
            work.append(
                serve_app(
                    processor_status_app(processor),
                    settings.processor_metrics_host,
                    settings.processor_metrics_port,
                    stop,
                )
            )
        await asyncio.gather(*work)
    finally:
        await consumer.stop()
        await producer.stop()


def processor_status_app(processor: Processor) -> FastAPI:
    """Liveness, readiness (partitions assigned) and Prometheus for one processor."""
    app = FastAPI(title="flowmetrics processor", docs_url=None, redoc_url=None)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> Response:
        assigned = len(processor.consumer.assignment())
        body = {
            "ready": assigned > 0,
            "partitions": assigned,
            "batches": processor.batches,
            "deferred": processor.deferred_status(),
        }
        return JSONResponse(body, status_code=200 if assigned else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def build_api(settings: Settings, ends: Endpoints) -> FastAPI:
    # The read-only role when configured (FLOW_API_DATABASE_URL), else the shared DSN;
    # either way every pooled connection is read-only.
    pool = make_pool(settings.api_database_url or ends.database_url, configure=configure_read_only)
    auth = None
    if settings.api_auth_required:
        auth = ApiKeyAuth(
            SqlKeyStore(pool), RateLimiter(settings.api_rate_limit, settings.api_rate_burst)
        )
    return create_api_app(pool, stage_config(settings), auth=auth, settings=settings)


async def run_api(settings: Settings, ends: Endpoints, stop: asyncio.Event) -> None:
    log.info("api_listening", port=settings.api_port)
    await serve_app(build_api(settings, ends), settings.api_host, settings.api_port, stop)
