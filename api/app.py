"""The read-only REST API (OpenAPI at /docs).

Routers are grouped by concern (``api/routes_*.py``); this module wires them,
the connection pool and the RFC 7807 error format.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from psycopg_pool import AsyncConnectionPool
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.auth import AUTH_RESPONSES, ApiKeyAuth
from api.deps import AppState
from api.problems import COMMON_RESPONSES
from api.prometheus import FlowGauges
from api.routes_analytics import router as analytics_router
from api.routes_dora import router as dora_router
from api.routes_flow import router as flow_router
from api.routes_services import router as services_router
from api.routes_work_items import router as work_items_router
from processor.stages import StageConfig

log = structlog.get_logger("api")

REQUESTS = Counter("flowmetrics_api_requests_total", "API requests", ["method", "route", "status"])

# Every router of the API, in the order they appear in /docs.
ROUTERS: list[APIRouter] = [
    flow_router,
    analytics_router,
    work_items_router,
    dora_router,
    services_router,
]


def problem(
    status: int, title: str, detail: Any, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status_code=status,
        media_type="application/problem+json",
        headers=headers,
    )


def create_api_app(
    pool: AsyncConnectionPool,
    stages: StageConfig,
    *,
    auth: ApiKeyAuth | None = None,
    **state: Any,
) -> FastAPI:
    """``auth`` guards every router of ``ROUTERS`` (not health, readiness or /metrics)."""
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await pool.open()
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(
        title="flowmetrics API",
        version="1",
        description="Read-only flow metrics and DORA keys. Errors are RFC 7807 problem+json.",
        lifespan=lifespan,
    )
    app.state.flow = AppState(pool=pool, stages=stages, extra=state)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, _title(exc.status_code), exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        return problem(422, "Invalid request", errors)

    @app.middleware("http")
    async def _count(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        route = request.scope.get("route")
        REQUESTS.labels(
            request.method, getattr(route, "path", "unmatched"), str(response.status_code)
        ).inc()
        return response

    @app.middleware("http")
    async def _refuse_nul(request: Request, call_next: Any) -> Response:
        # PostgreSQL text cannot hold NUL: a parameter with one would fail the
        # query (500); it is refused here, once for every route.
        if "\x00" in request.scope["path"] or any(
            "\x00" in k or "\x00" in v for k, v in request.query_params.multi_items()
        ):
            return problem(422, "Invalid request", "a parameter contains a NUL character")
        response: Response = await call_next(request)
        return response

    # The one place API keys are required: a router added to ROUTERS is guarded.
    guard = [Depends(auth)] if auth is not None else []
    responses = {**COMMON_RESPONSES, **(AUTH_RESPONSES if auth is not None else {})}
    for router in ROUTERS:
        app.include_router(router, dependencies=guard, responses=responses)

    @app.get("/api/v1/health", summary="Liveness")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: the database answers")
    async def ready() -> Response:
        try:
            async with pool.connection(timeout=2) as conn:
                await conn.execute("select 1")
        except Exception as exc:  # readiness reports, it never raises
            return JSONResponse({"ready": False, "reason": str(exc)}, status_code=503)
        return JSONResponse({"ready": True})

    flow_registry = CollectorRegistry()
    gauges = FlowGauges(flow_registry)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        body = generate_latest()
        try:
            async with pool.connection(timeout=2) as conn:
                await gauges.refresh(conn)
            body += generate_latest(flow_registry)
        except Exception as exc:  # a scrape must not fail because the database is away
            log.warning("flow_gauges_unavailable", error=str(exc))
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return app


def _title(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
