"""A rate-limit-aware REST client (httpx) shared by the Jira and GitHub readers.

What each answer leads to (:func:`classify` is the pure rule, :class:`ApiClient`
applies it):

==========================================  ==============================================
2xx                                         done; if ``x-ratelimit-remaining`` is 0, every
                                            later request first waits for the reset
429 with ``Retry-After``                    wait that long (Jira Cloud, GitHub secondary)
403/429, ``x-ratelimit-remaining: 0``       GitHub primary limit: wait until
                                            ``x-ratelimit-reset``
403/429 with ``Retry-After`` or "rate       GitHub secondary limit: wait ``Retry-After``,
limit" in the body                          else 60 s doubling
401, other 403                              :class:`SourceAuthError`, no retry
404                                         :class:`SourceNotFound`, no retry
other 4xx                                   :class:`SourceRequestError`, no retry
408, 5xx, network errors                    exponential backoff with full jitter, at most
                                            ``max_retries`` times (503 ``Retry-After`` is
                                            honoured)
==========================================  ==============================================

A rate-limit wait pauses the whole client (every concurrent request), because a
limit belongs to the credentials, not to one URL. Every sleep is capped by
``max_sleep_s`` so tests stay fast and an absurd header cannot stall a run.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import orjson
import structlog

from collectors.backfill.exceptions import (
    SourceAuthError,
    SourceError,
    SourceNotFound,
    SourceRequestError,
    SourceResponseError,
    SourceUnavailable,
)

log = structlog.get_logger("backfill.http")


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 6  # 5xx / network failures in a row, per request
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0
    max_sleep_s: float = 3600.0  # cap on any single sleep
    max_rate_limit_waits: int = 30  # rate-limit answers in a row, per request
    secondary_wait_s: float = 60.0  # GitHub: "wait at least one minute"


# -- the pure rule ------------------------------------------------------------------


@dataclass(frozen=True)
class Proceed:
    pass


@dataclass(frozen=True)
class RateLimited:
    wait_s: float | None  # None: the source did not say; back off from secondary_wait_s
    reason: str


@dataclass(frozen=True)
class Transient:
    wait_s: float | None  # a Retry-After on a 503, else None: exponential backoff
    reason: str


@dataclass(frozen=True)
class Fatal:
    error: type[SourceError]
    reason: str


Decision = Proceed | RateLimited | Transient | Fatal


def classify(status: int, headers: Mapping[str, str], body: str, *, now: float) -> Decision:
    """What to do with one answer (``headers`` keys lower-case, ``now`` epoch seconds)."""
    if status < 400:
        return Proceed()
    retry_after = parse_retry_after(headers.get("retry-after"), now=now)
    remaining = headers.get("x-ratelimit-remaining")
    reset = parse_reset(headers.get("x-ratelimit-reset"))
    if status in (403, 429):
        if remaining is not None and remaining.strip() == "0" and reset is not None:
            # At least a second: a reset already past (clock skew) must not spin.
            return RateLimited(max(reset - now, 1.0), "primary rate limit")
        if retry_after is not None:
            return RateLimited(retry_after, f"{status} Retry-After")
        if status == 429 or "rate limit" in body.lower():
            return RateLimited(None, f"{status} rate limit without a wait")
        return Fatal(SourceAuthError, f"{status} forbidden: {_snippet(body)}")
    if status == 401:
        return Fatal(SourceAuthError, f"401 unauthorized: {_snippet(body)}")
    if status == 404:
        return Fatal(SourceNotFound, "404 not found")
    if status == 408 or status >= 500:
        return Transient(retry_after if status == 503 else None, f"{status}")
    return Fatal(SourceRequestError, f"{status}: {_snippet(body)}")


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """``Retry-After``: delay-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max(parsedate_to_datetime(value).timestamp() - now, 0.0)
    except (TypeError, ValueError):
        return None


def parse_reset(value: str | None) -> float | None:
    """``x-ratelimit-reset``: epoch seconds (GitHub) or an ISO-8601 time (Jira Cloud)."""
    if not value:
        return None
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


def backoff_s(attempt: int, policy: RetryPolicy, rng: Callable[[], float]) -> float:
    """Full jitter: uniform in [0, min(cap, base·2^(attempt-1))]."""
    ceiling = min(policy.backoff_cap_s, policy.backoff_base_s * (2 ** max(attempt - 1, 0)))
    return float(rng() * ceiling)


def _snippet(body: str) -> str:
    return " ".join(body.split())[:200]


# -- the client ---------------------------------------------------------------------


@dataclass
class ClientStats:
    requests: int = 0
    retries: int = 0
    rate_limit_waits: int = 0
    waited_s: float = 0.0
    by_status: dict[int, int] = field(default_factory=dict)


WaitHook = Callable[[str, float], None]


class ApiClient:
    """GET/POST JSON against one source, under its rate limits and with retries."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        policy: RetryPolicy,
        *,
        name: str,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.http = http
        self.policy = policy
        self.name = name
        self.stats = ClientStats()
        self.on_wait: WaitHook | None = None
        self._sleep = sleep
        self._clock = clock
        self._rng = rng
        self._resume_at = 0.0  # epoch seconds before which nothing is sent

    async def aclose(self) -> None:
        await self.http.aclose()

    async def get_json(self, url: str, params: Mapping[str, Any] | None = None) -> Any:
        return _json(await self.request("GET", url, params=params))

    async def get(self, url: str, params: Mapping[str, Any] | None = None) -> httpx.Response:
        return await self.request("GET", url, params=params)

    async def post_json(self, url: str, body: Any) -> Any:
        return _json(await self.request("POST", url, json=body))

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        failures = 0
        limited = 0
        while True:
            await self._gate()
            self.stats.requests += 1
            try:
                response = await self.http.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                failures += 1
                if failures > self.policy.max_retries:
                    raise SourceUnavailable(
                        f"{self.name}: {method} {url} failed {failures} times: {exc!r}", url=url
                    ) from exc
                await self._wait(
                    backoff_s(failures, self.policy, self._rng),
                    f"network error {type(exc).__name__}",
                    url,
                )
                continue
            self.stats.by_status[response.status_code] = (
                self.stats.by_status.get(response.status_code, 0) + 1
            )
            now = self._clock()
            decision = classify(
                response.status_code,
                response.headers,
                response.text if response.status_code >= 400 else "",
                now=now,
            )
            if isinstance(decision, Proceed):
                self._note_quota(response.headers)
                return response
            if isinstance(decision, Fatal):
                raise decision.error(
                    f"{self.name}: {method} {response.url}: {decision.reason}",
                    status=response.status_code,
                    url=str(response.url),
                )
            if isinstance(decision, RateLimited):
                limited += 1
                if limited > self.policy.max_rate_limit_waits:
                    raise SourceUnavailable(
                        f"{self.name}: still rate limited after {limited - 1} waits",
                        url=url,
                        status=response.status_code,
                    )
                wait = decision.wait_s
                if wait is None:
                    wait = self.policy.secondary_wait_s * (2 ** (limited - 1))
                # A little jitter so that several clients do not return together.
                wait += self._rng() * min(1.0, 0.1 * wait)
                self.stats.rate_limit_waits += 1
                self._resume_at = max(self._resume_at, now + min(wait, self.policy.max_sleep_s))
                await self._wait(wait, decision.reason, url)
                continue
            failures += 1
            if failures > self.policy.max_retries:
                raise SourceUnavailable(
                    f"{self.name}: {method} {url}: {decision.reason} after {failures} attempts",
                    status=response.status_code,
                    url=url,
                )
            wait = (
                decision.wait_s
                if decision.wait_s is not None
                else backoff_s(failures, self.policy, self._rng)
            )
            await self._wait(wait, decision.reason, url)

    def _note_quota(self, headers: Mapping[str, str]) -> None:
        """The last request of the window succeeded: the next one waits for the reset."""
        remaining = headers.get("x-ratelimit-remaining")
        if remaining is None or remaining.strip() != "0":
            return
        reset = parse_reset(headers.get("x-ratelimit-reset"))
        if reset is not None:
            self._resume_at = max(self._resume_at, reset)

    async def _gate(self) -> None:
        # A loop: another request may push the window further while this one sleeps.
        while (delay := self._resume_at - self._clock()) > 0:
            self.stats.rate_limit_waits += 1
            await self._wait(delay, "rate limit window", None, count_retry=False)

    async def _wait(
        self, seconds: float, reason: str, url: str | None, *, count_retry: bool = True
    ) -> None:
        seconds = min(max(seconds, 0.0), self.policy.max_sleep_s)
        if count_retry:
            self.stats.retries += 1
        self.stats.waited_s += seconds
        log.info(
            "backfill_wait", source=self.name, reason=reason, wait_s=round(seconds, 3), url=url
        )
        if self.on_wait is not None:
            self.on_wait(reason, seconds)
        await self._sleep(seconds)


def _json(response: httpx.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError as exc:
        raise SourceResponseError(
            f"{response.request.method} {response.url}: body is not JSON",
            status=response.status_code,
            url=str(response.url),
        ) from exc
