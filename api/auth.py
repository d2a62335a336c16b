"""Bearer API keys for ``/api/v1``: the token format, its hash, the lookup and
a per-key rate limit.

A token is ``fmk_<key id>_<secret>``: the key id (8 hex characters) is public
and names the key in ``flowmetrics api-key list`` and in logs; the secret is 32
bytes from :mod:`secrets` (256 bits). Only ``sha256(token)`` is stored.

Why SHA-256 and not argon2/bcrypt: slow, salted hashes exist to make guessing
*low-entropy* passwords expensive after a database leak. A 256-bit random
token cannot be guessed at any hash speed (2^255 tries on average), so a slow
hash buys nothing, while a fast unsalted one lets the API find a key with one
indexed equality lookup instead of a deliberately slow verification per
request — which would itself be a denial-of-service lever.

The API keeps no per-key state but the rate limiter's buckets (in-process: with
N API processes, a key gets N times the rate). Revocation takes effect on the
next request; the lookup is not cached.

Errors answered (RFC 7807, through the API's HTTPException handler)::

    401  missing, malformed, unknown or revoked key   (WWW-Authenticate: Bearer)
    429  the key's bucket is empty                      (Retry-After: seconds)
    503  the key store cannot be read right now         (Retry-After: 1)
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Protocol

import psycopg
import structlog
from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from api.problems import problem_responses

log = structlog.get_logger("api.auth")

TOKEN_PREFIX = "fmk_"
_TOKEN_RE = re.compile(r"^fmk_([0-9a-f]{8})_[A-Za-z0-9_-]{43}$")

# The responses every guarded route may give, for the OpenAPI document.
AUTH_RESPONSES = problem_responses(
    {
        401: "Missing, unknown or revoked API key",
        429: "Rate limit of this API key exceeded; see Retry-After",
        503: "The API key store cannot be read right now",
    }
)


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str


@dataclass(frozen=True)
class IssuedKey:
    """A new key; ``token`` exists only here and is shown to its owner once."""

    key_id: str
    name: str
    token: str
    key_hash: str


def issue_key(name: str) -> IssuedKey:
    key_id = secrets.token_hex(4)
    token = f"{TOKEN_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    return IssuedKey(key_id=key_id, name=name, token=token, key_hash=hash_token(token))


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def well_formed(token: str) -> bool:
    """Whether ``token`` could be one of ours (saves a lookup for junk)."""
    return _TOKEN_RE.fullmatch(token) is not None


class KeyStore(Protocol):
    async def find(self, key_hash: str) -> ApiKey | None:
        """The active (not revoked) key with this hash, if any."""
        ...


class SqlKeyStore:
    """``api_keys`` read through the API's (read-only) pool."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def find(self, key_hash: str) -> ApiKey | None:
        async with self.pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                "select key_id, name from api_keys where key_hash = %s and revoked_at is null",
                (key_hash,),
            )
            row = await cur.fetchone()
        return ApiKey(key_id=row[0], name=row[1]) if row else None


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` held; a request takes one."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.updated = now

    def take(self, now: float) -> float:
        """0 when a token was taken, else the seconds until one will be there."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """One bucket per key id. Only authenticated keys get a bucket, so the map is
    bounded by the number of issued keys."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def wait_for(self, key_id: str) -> float:
        now = self.clock()
        bucket = self._buckets.get(key_id)
        if bucket is None:
            bucket = self._buckets[key_id] = TokenBucket(self.rate, self.burst, now)
        return bucket.take(now)


_bearer = HTTPBearer(auto_error=False, description="An API key: `flowmetrics api-key create`")
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


class ApiKeyAuth:
    """The FastAPI dependency guarding every ``/api/v1`` router (see ``api.app``)."""

    def __init__(self, store: KeyStore, limiter: RateLimiter) -> None:
        self.store = store
        self.limiter = limiter

    async def __call__(self, credentials: BearerDep) -> ApiKey:
        token = credentials.credentials if credentials is not None else ""
        if not well_formed(token):
            raise _unauthenticated("an 'Authorization: Bearer <API key>' header is required")
        try:
            key = await self.store.find(hash_token(token))
        except (psycopg.OperationalError, PoolTimeout) as exc:
            log.warning("api_key_store_unavailable", error=type(exc).__name__)
            raise HTTPException(
                503, "the API key store cannot be read right now", headers={"Retry-After": "1"}
            ) from exc
        if key is None:
            log.info("api_key_rejected", key_id=token[4:12])
            raise _unauthenticated("unknown or revoked API key")
        wait = self.limiter.wait_for(key.key_id)
        if wait > 0:
            raise HTTPException(
                429,
                f"rate limit of API key {key.key_id} exceeded",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
        return key


def _unauthenticated(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})
