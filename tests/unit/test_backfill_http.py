"""The rate-limit and retry rules of the backfill's REST client (no network: an
httpx transport function plays the server, a fake clock plays time)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import pytest

from collectors.backfill.exceptions import (
    SourceAuthError,
    SourceNotFound,
    SourceRequestError,
    SourceUnavailable,
)
from collectors.backfill.http import (
    ApiClient,
    Fatal,
    Proceed,
    RateLimited,
    RetryPolicy,
    Transient,
    backoff_s,
    classify,
    parse_reset,
    parse_retry_after,
)

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("status", "headers", "body", "expected"),
    [
        (200, {}, "", Proceed()),
        (429, {"retry-after": "7"}, "", RateLimited(7.0, "429 Retry-After")),
        (
            403,
            {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(NOW) + 30)},
            "",
            RateLimited(30.0, "primary rate limit"),
        ),
        (403, {"retry-after": "3"}, "secondary rate limit", RateLimited(3.0, "403 Retry-After")),
        (
            403,
            {},
            "You have exceeded a secondary rate limit",
            RateLimited(None, "403 rate limit without a wait"),
        ),
        (429, {}, "", RateLimited(None, "429 rate limit without a wait")),
        (503, {"retry-after": "2"}, "", Transient(2.0, "503")),
        (502, {}, "", Transient(None, "502")),
        (408, {}, "", Transient(None, "408")),
    ],
)
def test_classify_waits_and_retries(
    status: int, headers: dict[str, str], body: str, expected: object
) -> None:
    """Rate limits wait as told; 408/5xx retry; the right wait comes from the right header."""
    assert classify(status, headers, body, now=NOW) == expected


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (401, "Bad credentials", SourceAuthError),
        (403, "Resource not accessible by integration", SourceAuthError),
        (404, "", SourceNotFound),
        (400, "bad JQL", SourceRequestError),
        (410, "gone", SourceRequestError),
    ],
)
def test_classify_gives_up_on_client_errors(status: int, body: str, error: type) -> None:
    """Auth, not-found and request errors are not retried."""
    decision = classify(status, {}, body, now=NOW)
    assert isinstance(decision, Fatal) and decision.error is error


def test_a_primary_limit_whose_reset_passed_still_waits_a_second() -> None:
    """Clock skew must not turn a rate limit into a busy loop."""
    headers = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(NOW) - 5)}
    assert classify(403, headers, "", now=NOW) == RateLimited(1.0, "primary rate limit")


def test_retry_after_and_reset_spellings() -> None:
    """Retry-After: seconds or an HTTP date; reset: epoch seconds or ISO-8601 (Jira)."""
    later = datetime.fromtimestamp(NOW + 90, tz=UTC)
    assert parse_retry_after("12", now=NOW) == 12.0
    assert parse_retry_after(format_datetime(later, usegmt=True), now=NOW) == pytest.approx(90)
    assert parse_retry_after("soon", now=NOW) is None
    assert parse_reset("1700000030") == 1_700_000_030.0
    assert parse_reset("2023-11-14T22:13:50Z") == 1_700_000_030.0
    assert parse_reset("2023-11-14T22:13:50") is None  # no offset: unusable


def test_backoff_is_full_jitter_under_a_cap() -> None:
    """Exponential ceiling, capped, scaled by the random draw."""
    policy = RetryPolicy(backoff_base_s=1.0, backoff_cap_s=10.0)
    assert [backoff_s(n, policy, lambda: 1.0) for n in (1, 2, 3, 4, 5, 6)] == [
        1.0,
        2.0,
        4.0,
        8.0,
        10.0,
        10.0,
    ]
    assert backoff_s(3, policy, lambda: 0.5) == 2.0


# -- the client against a scripted server -------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = NOW
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def client_for(
    answers: list[httpx.Response | Exception], clock: Clock, policy: RetryPolicy | None = None
) -> tuple[ApiClient, list[float]]:
    """A client whose server answers from ``answers`` in order; returns request times."""
    sent: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(clock.now)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://x")
    client = ApiClient(
        http,
        policy or RetryPolicy(backoff_base_s=0.5),
        name="test",
        sleep=clock.sleep,
        clock=clock.time,
        rng=lambda: 0.0,
    )
    return client, sent


def ok(body: object = None, **headers: str) -> httpx.Response:
    return httpx.Response(200, json=body if body is not None else {}, headers=headers)


async def test_5xx_bursts_and_network_errors_are_retried_with_backoff() -> None:
    """502, a dropped connection and 503 Retry-After, then success."""
    clock = Clock()
    client, sent = client_for(
        [
            httpx.Response(502),
            httpx.ConnectError("refused"),
            httpx.Response(503, headers={"retry-after": "4"}),
            ok({"fine": True}),
        ],
        clock,
    )
    assert await client.get_json("/thing") == {"fine": True}
    assert len(sent) == 4
    assert clock.sleeps == [0.0, 0.0, 4.0]  # rng=0: full jitter draws zero
    assert client.stats.retries == 3


async def test_retries_are_bounded() -> None:
    """After max_retries failures in a row the source is reported unavailable."""
    clock = Clock()
    client, sent = client_for([httpx.Response(500)] * 4, clock, RetryPolicy(max_retries=3))
    with pytest.raises(SourceUnavailable):
        await client.get("/thing")
    assert len(sent) == 4


async def test_jira_429_waits_retry_after_before_the_next_request() -> None:
    """429 + Retry-After: nothing is sent until the wait is over."""
    clock = Clock()
    client, sent = client_for([httpx.Response(429, headers={"retry-after": "5"}), ok()], clock)
    await client.get("/rest/api/3/search/jql")
    assert sent[1] - sent[0] >= 5.0


async def test_github_exhausted_quota_pauses_until_reset_without_a_403() -> None:
    """remaining=0 on a success: the next request waits for x-ratelimit-reset first."""
    clock = Clock()
    reset = str(int(NOW) + 20)
    client, sent = client_for(
        [ok(**{"x-ratelimit-remaining": "0", "x-ratelimit-reset": reset}), ok()], clock
    )
    await client.get("/a")
    await client.get("/b")
    assert sent[1] >= int(NOW) + 20


async def test_github_secondary_limit_without_retry_after_backs_off_a_minute() -> None:
    """A secondary limit with no header waits a minute, then doubles."""
    clock = Clock()
    limited = httpx.Response(403, json={"message": "You have exceeded a secondary rate limit"})
    client, _ = client_for([limited, limited, ok()], clock)
    await client.get("/a")
    assert clock.sleeps == [60.0, 120.0]


async def test_sleeps_are_capped_by_max_sleep() -> None:
    """An hour-long reset is cut to max_sleep_s (how tests stay fast)."""
    clock = Clock()
    reset = str(int(NOW) + 3600)
    client, _ = client_for(
        [
            httpx.Response(403, headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": reset}),
            ok(),
        ],
        clock,
        RetryPolicy(max_sleep_s=2.0),
    )
    await client.get("/a")
    assert max(clock.sleeps) == 2.0


async def test_endless_rate_limiting_gives_up() -> None:
    """A server that never lets go fails the run instead of waiting forever."""
    clock = Clock()
    answers: list[httpx.Response | Exception] = [
        httpx.Response(429, headers={"retry-after": "1"}) for _ in range(4)
    ]
    client, _ = client_for(answers, clock, RetryPolicy(max_rate_limit_waits=3))
    with pytest.raises(SourceUnavailable, match="rate limited"):
        await client.get("/a")


async def test_auth_errors_are_not_retried() -> None:
    """401 fails at once with the source's message."""
    clock = Clock()
    client, sent = client_for([httpx.Response(401, text="Bad credentials")], clock)
    with pytest.raises(SourceAuthError, match="Bad credentials"):
        await client.get("/a")
    assert len(sent) == 1


async def test_wait_hook_sees_every_wait() -> None:
    """The progress display is told about each wait and its reason."""
    clock = Clock()
    seen: list[tuple[str, float]] = []
    client, _ = client_for([httpx.Response(429, headers={"retry-after": "3"}), ok()], clock)
    hook: Callable[[str, float], None] = lambda reason, s: seen.append((reason, s))  # noqa: E731
    client.on_wait = hook
    await client.get("/a")
    assert seen == [("429 Retry-After", 3.0)]
