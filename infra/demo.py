"""``flowmetrics demo``: feed the running pipeline a synthetic dataset through the
real webhook endpoints, wait for the processor, and print numbers from the API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson

from collectors.signatures import sign
from infra.demo_data import jira_deliveries
from infra.demo_report import summarize_flow_analytics
from infra.services import Endpoints
from infra.settings import Settings

Report = Callable[[httpx.AsyncClient], Awaitable[list[str]]]


async def flow_analytics(api: httpx.AsyncClient) -> list[str]:
    return ["", *await summarize_flow_analytics(api)]


# Sections printed after the headline numbers.
REPORTS: list[Report] = [flow_analytics]


async def _wait(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.05
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"demo: timed out waiting for {what}")
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.5)


async def _up(client: httpx.AsyncClient, path: str) -> bool:
    try:
        return (await client.get(path)).status_code == 200
    except httpx.HTTPError:
        return False


async def post_jira_dataset(settings: Settings, collector: httpx.AsyncClient) -> int:
    secret = settings.jira_webhook_secret
    semaphore = asyncio.Semaphore(32)
    sent = 0

    async def post(delivery_id: str, body: dict[str, Any]) -> None:
        nonlocal sent
        raw = orjson.dumps(body)
        headers = {
            "content-type": "application/json",
            "x-atlassian-webhook-identifier": delivery_id,
        }
        if secret is not None:
            headers["x-hub-signature"] = sign(secret.get_secret_value(), raw)
        async with semaphore:
            response = await collector.post("/webhooks/jira", content=raw, headers=headers)
        if response.status_code >= 300:
            raise RuntimeError(f"collector answered {response.status_code}: {response.text}")
        sent += 1

    await asyncio.gather(*(post(d.delivery_id, d.body) for d in jira_deliveries()))
    return sent


async def _processor_idle(api: httpx.AsyncClient, stable_for: float = 1.0) -> None:
    """The processor has caught up when the folded-event count stops moving."""
    last: float | None = None
    since = time.monotonic()
    deadline = since + 120
    while time.monotonic() < deadline:
        text = (await api.get("/metrics")).text
        folded = sum(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("flowmetrics_events_folded_total")
        )
        if folded != last:
            last, since = folded, time.monotonic()
        elif time.monotonic() - since >= stable_for and folded > 0:
            return
        await asyncio.sleep(0.2)
    raise TimeoutError("demo: the processor did not catch up within 120 s")


def _fmt(value: Any) -> str:
    return "—" if value is None else (f"{value:,.1f}" if isinstance(value, float) else str(value))


async def headline(api: httpx.AsyncClient) -> list[str]:
    lines = ["", "Flow metrics, last 30 days (from GET /api/v1/metrics)", ""]
    lines.append(
        f"{'team':<8}{'throughput':>11}{'WIP':>6}"
        f"{'cycle p50 h':>13}{'p85 h':>9}{'p95 h':>9}{'lead p50 h':>12}"
    )
    for team in (None, "PAY", "WEB", "OPS"):
        params = {"team": team} if team else {}
        m = (await api.get("/api/v1/metrics", params=params)).json()
        ct, lt = m["cycle_time_hours"], m["lead_time_hours"]
        lines.append(
            f"{team or 'all':<8}{m['throughput']:>11}{m['wip']:>6}{_fmt(ct['p50']):>13}"
            f"{_fmt(ct['p85']):>9}{_fmt(ct['p95']):>9}{_fmt(lt['p50']):>12}"
        )
    return lines


async def run_demo(settings: Settings, ends: Endpoints) -> None:
    del ends  # the demo speaks only HTTP, like a real webhook sender
    collector = httpx.AsyncClient(
        base_url=f"http://{settings.collector_host}:{settings.collector_port}", timeout=30
    )
    api = httpx.AsyncClient(base_url=f"http://{settings.api_host}:{settings.api_port}", timeout=30)
    try:
        await _wait(lambda: _up(collector, "/health"), 60, "the collectors")
        await _wait(lambda: _up(api, "/ready"), 60, "the API")
        started = time.monotonic()
        sent = await post_jira_dataset(settings, collector)
        print(
            f"demo: posted {sent} signed Jira webhooks in {time.monotonic() - started:.1f}s",
            flush=True,
        )
        await _processor_idle(api)
        lines = await headline(api)
        for report in REPORTS:
            lines += await report(api)
        print("\n".join(lines), flush=True)
    finally:
        await collector.aclose()
        await api.aclose()
