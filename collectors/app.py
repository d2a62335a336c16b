"""The collectors' HTTP app: Jira and GitHub webhooks, and canonical events over HTTP.

Every route reads the raw body under a size limit, authenticates it, parses and
normalizes it, and answers 2xx only after the publisher made it durable.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from pydantic import ValidationError

from collectors.exceptions import (
    CollectorError,
    MalformedPayload,
    PayloadTooLarge,
    Unauthenticated,
    UnprocessablePayload,
)
from collectors.github import GitHubMapping, GitHubPayloadError, normalize_github
from collectors.jira import JiraPayloadError, jira_fallback_delivery_id, normalize_jira
from collectors.openapi import (
    GITHUB_REQUEST,
    INGEST_REQUEST,
    INGEST_RESPONSES,
    JIRA_REQUEST,
    WEBHOOK_RESPONSES,
)
from collectors.publisher import Publisher, RawDelivery
from collectors.signatures import verify
from processor.stages import StageConfig
from schemas.events import CanonicalEvent, parse_event

log = structlog.get_logger("collectors")

DELIVERIES = Counter(
    "flowmetrics_webhook_deliveries_total",
    "Webhook deliveries by source and outcome",
    ["source", "outcome"],
)
IGNORED = Counter(
    "flowmetrics_webhook_ignored_total", "Deliveries accepted but not mapped", ["source", "event"]
)


@dataclass(frozen=True)
class CollectorConfig:
    jira_secret: str | None
    github_secret: str | None
    ingest_token: str | None
    max_body_bytes: int = 1024 * 1024
    max_batch_events: int = 1000
    dedupe_window: int = 100_000


class RecentDeliveries:
    """A bounded memory of delivery ids already made durable.

    It spares the broker a republish of a retried delivery; it is not what
    prevents double counting — stable event ids folded idempotently do that.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._seen

    def add(self, key: tuple[str, str]) -> None:
        self._seen[key] = None
        self._seen.move_to_end(key)
        while len(self._seen) > self.size:
            self._seen.popitem(last=False)


def problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra},
        status_code=status,
        media_type="application/problem+json",
    )


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedPayload(f"body is not JSON: {exc}") from exc


def create_collector_app(
    config: CollectorConfig,
    publisher: Publisher,
    stages: StageConfig,
    github_mapping: GitHubMapping | None = None,
    *,
    readiness: Callable[[], Awaitable[dict[str, Any]]] | None = None,
) -> FastAPI:
    app = FastAPI(
        title="flowmetrics collectors",
        version="1",
        description="Webhook receivers and the canonical-event ingest endpoint.",
    )
    recent = RecentDeliveries(config.dedupe_window)
    mapping = github_mapping or GitHubMapping()

    @app.exception_handler(CollectorError)
    async def _collector_error(_: Request, exc: CollectorError) -> JSONResponse:
        return problem(exc.status, exc.title, exc.detail, **exc.extra)

    async def accept(
        raw: RawDelivery, events: tuple[CanonicalEvent, ...], ignored: str | None
    ) -> JSONResponse:
        await publisher.publish(raw, events)
        recent.add((raw.source, raw.delivery_id))
        if ignored:
            IGNORED.labels(source=raw.source, event=raw.event_name).inc()
            DELIVERIES.labels(source=raw.source, outcome="ignored").inc()
            return JSONResponse(
                {"status": "ignored", "delivery_id": raw.delivery_id, "reason": ignored},
                status_code=202,
            )
        DELIVERIES.labels(source=raw.source, outcome="accepted").inc()
        log.info(
            "delivery_accepted",
            source=raw.source,
            delivery_id=raw.delivery_id,
            source_event=raw.event_name,
            events=len(events),
        )
        return JSONResponse(
            {"status": "accepted", "delivery_id": raw.delivery_id, "events": len(events)},
            status_code=202,
        )

    def duplicate(source: str, delivery_id: str) -> JSONResponse | None:
        if (source, delivery_id) in recent:
            DELIVERIES.labels(source=source, outcome="duplicate").inc()
            return JSONResponse(
                {"status": "duplicate", "delivery_id": delivery_id}, status_code=200
            )
        return None

    async def unprocessable(raw: RawDelivery, reason: str) -> None:
        # Authentic but unmappable: kept on the dead-letter topic for a re-drive.
        await publisher.dead_letter(raw, reason)
        DELIVERIES.labels(source=raw.source, outcome="unprocessable").inc()
        raise UnprocessablePayload(reason, delivery_id=raw.delivery_id)

    @app.post(
        "/webhooks/jira",
        status_code=202,
        summary="Receive a Jira webhook",
        responses=WEBHOOK_RESPONSES,
        openapi_extra=JIRA_REQUEST,
    )
    async def jira_webhook(request: Request) -> Response:
        body = await read_body(request, config.max_body_bytes)
        if config.jira_secret and not verify(
            config.jira_secret, body, request.headers.get("x-hub-signature")
        ):
            DELIVERIES.labels(source="jira", outcome="unauthenticated").inc()
            raise Unauthenticated("X-Hub-Signature is missing or does not match the body")
        payload = parse_json(body)
        if not isinstance(payload, dict):
            raise UnprocessablePayload("a Jira webhook body is a JSON object")
        received_at = datetime.now(UTC)
        delivery_id = request.headers.get("x-atlassian-webhook-identifier") or (
            "h:" + jira_fallback_delivery_id(payload)
        )
        if (dup := duplicate("jira", delivery_id)) is not None:
            return dup
        raw = RawDelivery(
            source="jira",
            delivery_id=delivery_id,
            received_at=received_at,
            event_name=str(payload.get("webhookEvent", "")),
            body=body,
        )
        try:
            result = normalize_jira(payload, received_at=received_at, stages=stages)
        except JiraPayloadError as exc:
            if "webhookEvent" not in payload:
                raise UnprocessablePayload(str(exc)) from exc
            await unprocessable(raw, str(exc))
            raise  # unreachable: unprocessable() raises
        return await accept(raw, result.events, result.ignored)

    @app.post(
        "/webhooks/github",
        status_code=202,
        summary="Receive a GitHub webhook",
        responses=WEBHOOK_RESPONSES,
        openapi_extra=GITHUB_REQUEST,
    )
    async def github_webhook(request: Request) -> Response:
        body = await read_body(request, config.max_body_bytes)
        if config.github_secret and not verify(
            config.github_secret, body, request.headers.get("x-hub-signature-256")
        ):
            DELIVERIES.labels(source="github", outcome="unauthenticated").inc()
            raise Unauthenticated("X-Hub-Signature-256 is missing or does not match the body")
        event_name = request.headers.get("x-github-event")
        if not event_name:
            raise MalformedPayload("X-GitHub-Event header is required")
        payload = parse_json(body)
        if not isinstance(payload, dict):
            raise UnprocessablePayload("a GitHub webhook body is a JSON object")
        delivery_id = request.headers.get("x-github-delivery") or (
            "h:" + hashlib.sha256(body).hexdigest()[:32]
        )
        if (dup := duplicate("github", delivery_id)) is not None:
            return dup
        received_at = datetime.now(UTC)
        raw = RawDelivery(
            source="github",
            delivery_id=delivery_id,
            received_at=received_at,
            event_name=event_name,
            body=body,
        )
        try:
            result = normalize_github(
                event_name, delivery_id, payload, received_at=received_at, mapping=mapping
            )
        except GitHubPayloadError as exc:
            await unprocessable(raw, str(exc))
            raise  # unreachable
        return await accept(raw, result.events, result.ignored)

    @app.post(
        "/api/v1/events",
        status_code=202,
        summary="Publish canonical events over HTTP",
        responses=INGEST_RESPONSES,
        openapi_extra=INGEST_REQUEST,
    )
    async def ingest_events(request: Request) -> Response:
        token = config.ingest_token
        if token:
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {token}".encode()):
                raise Unauthenticated("a valid 'Authorization: Bearer <token>' is required")
        body = await read_body(request, config.max_body_bytes * 8)
        payload = parse_json(body)
        if not isinstance(payload, list):
            raise UnprocessablePayload("the body is a JSON array of canonical events")
        if len(payload) > config.max_batch_events:
            raise PayloadTooLarge(
                f"{len(payload)} events; at most {config.max_batch_events} per request"
            )
        events: list[CanonicalEvent] = []
        errors: list[dict[str, Any]] = []
        for index, item in enumerate(payload):
            try:
                events.append(parse_event(item))
            except (ValidationError, ValueError, TypeError) as exc:
                errors.append({"index": index, "error": _validation_reason(exc)})
        if errors:
            raise UnprocessablePayload(
                f"{len(errors)} of {len(payload)} events are invalid; nothing was published",
                errors=errors,
            )
        await publisher.publish(None, events)
        return JSONResponse(
            {
                "status": "accepted",
                "results": [{"event_id": e.event_id, "status": "accepted"} for e in events],
            },
            status_code=202,
        )

    @app.get("/health", summary="Liveness")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness")
    async def ready() -> Response:
        state = await readiness() if readiness else {"ready": True}
        return JSONResponse(state, status_code=200 if state.get("ready") else 503)

    @app.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def _validation_reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
        )
    return str(exc)
