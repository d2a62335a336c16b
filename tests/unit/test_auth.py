"""API keys: token format, hashing, the token bucket and the guard's answers."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI
from hypothesis import given
from hypothesis import strategies as st

from api.app import problem
from api.auth import (
    ApiKey,
    ApiKeyAuth,
    RateLimiter,
    TokenBucket,
    hash_token,
    issue_key,
    well_formed,
)
from infra.settings import Settings


class FakeKeyStore:
    """Keys by hash, as ``api_keys`` holds them; counts lookups."""

    def __init__(self, *keys: tuple[str, ApiKey]) -> None:
        self.by_hash = {hash_token(token): key for token, key in keys}
        self.lookups = 0

    async def find(self, key_hash: str) -> ApiKey | None:
        self.lookups += 1
        return self.by_hash.get(key_hash)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def guarded_app(auth: ApiKeyAuth) -> FastAPI:
    from starlette.exceptions import HTTPException

    app = FastAPI()
    router = APIRouter(prefix="/api/v1")

    @router.get("/thing")
    async def thing() -> dict[str, str]:
        return {"ok": "yes"}

    @app.exception_handler(HTTPException)
    async def _err(_: Any, exc: HTTPException) -> Any:
        return problem(exc.status_code, "error", exc.detail, exc.headers)

    app.include_router(router, dependencies=[Depends(auth)])
    return app


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def test_issued_tokens_are_well_formed_distinct_and_only_their_hash_is_kept() -> None:
    """A token is fmk_<8 hex>_<43 urlsafe chars>; the record carries its SHA-256."""
    keys = [issue_key("ci") for _ in range(50)]
    assert len({k.token for k in keys}) == 50
    for key in keys:
        assert well_formed(key.token)
        assert key.token.startswith(f"fmk_{key.key_id}_")
        assert key.key_hash == hash_token(key.token) and len(key.key_hash) == 64
        assert key.token not in key.key_hash


def test_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    """burst requests at once, then one per 1/rate seconds; the wait says how long."""
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.25) == pytest.approx(0.25)
    assert bucket.take(0.5) == 0.0
    assert bucket.take(100.0) == 0.0  # never holds more than burst
    assert [bucket.take(100.0) for _ in range(3)][-1] > 0


@given(st.lists(st.floats(min_value=0, max_value=5, allow_nan=False), max_size=200))
def test_bucket_never_admits_more_than_burst_plus_rate_times_elapsed(gaps: list[float]) -> None:
    """Over any run of requests, admitted <= burst + rate * elapsed."""
    rate, burst = 3.0, 5
    bucket = TokenBucket(rate, burst, now=0.0)
    now, admitted = 0.0, 0
    for gap in gaps:
        now += gap
        admitted += bucket.take(now) == 0.0
        assert admitted <= burst + rate * now + 1e-9


def test_each_key_has_its_own_bucket() -> None:
    """One key exhausting its rate does not slow another."""
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=1, clock=clock)
    assert limiter.wait_for("a") == 0.0
    assert limiter.wait_for("a") > 0
    assert limiter.wait_for("b") == 0.0


async def test_guard_answers_401_without_a_valid_key() -> None:
    """No header, another scheme, junk, an unknown or a revoked key: 401 + WWW-Authenticate."""
    good = issue_key("ci")
    store = FakeKeyStore((good.token, ApiKey(good.key_id, "ci")))
    app = guarded_app(ApiKeyAuth(store, RateLimiter(100, 100)))
    unknown = issue_key("gone").token
    async with client(app) as c:
        for headers in (
            {},
            {"authorization": f"Basic {good.token}"},
            {"authorization": "Bearer nonsense"},
            {"authorization": f"Bearer {good.token}x"},
            {"authorization": f"Bearer {unknown}"},
        ):
            response = await c.get("/api/v1/thing", headers=headers)
            assert response.status_code == 401, headers
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.headers["content-type"] == "application/problem+json"
        ok = await c.get("/api/v1/thing", headers={"authorization": f"Bearer {good.token}"})
        assert ok.status_code == 200 and ok.json() == {"ok": "yes"}
    assert store.lookups == 2  # the junk never reached the store


async def test_guard_answers_429_with_retry_after_when_the_key_is_over_its_rate() -> None:
    """burst requests pass; the next is 429 with Retry-After; after the wait it passes."""
    good = issue_key("ci")
    clock = FakeClock()
    app = guarded_app(
        ApiKeyAuth(
            FakeKeyStore((good.token, ApiKey(good.key_id, "ci"))),
            RateLimiter(rate=0.5, burst=2, clock=clock),
        )
    )
    headers = {"authorization": f"Bearer {good.token}"}
    async with client(app) as c:
        assert [(await c.get("/api/v1/thing", headers=headers)).status_code for _ in range(2)] == [
            200,
            200,
        ]
        limited = await c.get("/api/v1/thing", headers=headers)
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == "2"
        assert good.key_id in limited.json()["detail"]
        clock.now += 2
        assert (await c.get("/api/v1/thing", headers=headers)).status_code == 200


@pytest.mark.parametrize(
    ("env", "explicit", "required"),
    [
        ("production", None, True),
        ("development", None, False),
        ("production", False, False),
        ("development", True, True),
    ],
)
def test_api_auth_defaults_on_in_production_only(
    env: str, explicit: bool | None, required: bool
) -> None:
    """FLOW_API_AUTH unset: required in production, not in development."""
    options: dict[str, Any] = {"env": env, "allow_unsigned": True}
    if explicit is not None:
        options["api_auth"] = explicit
    assert Settings(**options).api_auth_required is required
