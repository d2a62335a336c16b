"""Collector: signed Jira webhooks acknowledged per second, and latency at a fixed rate.

``flowmetrics collect`` runs in its own process against the bench broker; a
second process sends real Jira status-change bodies (the recorded fixture when
``../shared/fixtures`` is there, else an equivalent body), each HMAC-signed and
with its own delivery id, so every request is verified, normalized and made
durable on the broker before its 202.

- saturation: ``--concurrency`` requests kept in flight for ``--seconds``: the
  most acknowledgements per second the collector gives;
- fixed rate: requests started on a fixed schedule (open loop) at ``--rate``
  per second; latency runs from the scheduled start, so a stall is charged to
  every request it delays (no coordinated omission).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.harness import REPO, Backends, flowmetrics_child, flowmetrics_env, percentile
from bench.harness import python_child as bench_child
from collectors.signatures import sign
from infra.embedded import free_port

SECRET = "bench-jira-secret"
FIXTURE = "jira/issue_updated/cloud_TES-41_status_inprogress_to_done.json"


def jira_body() -> bytes:
    recorded = REPO.parent / "shared" / "fixtures" / FIXTURE
    if recorded.exists():
        return recorded.read_bytes()
    return orjson.dumps(
        {
            "timestamp": 1550286940507,
            "webhookEvent": "jira:issue_updated",
            "issue_event_type_name": "issue_generic",
            "issue": {
                "id": "10040",
                "key": "TES-41",
                "self": "https://acme.atlassian.net/rest/api/2/issue/10040",
                "fields": {
                    "summary": "bench",
                    "issuetype": {"name": "Story"},
                    "project": {"key": "TES"},
                    "created": "2019-02-16T03:01:53.023+0000",
                    "status": {"name": "Done", "statusCategory": {"key": "done"}},
                },
            },
            "changelog": {
                "id": "10195",
                "items": [{"field": "status", "fromString": "In Progress", "toString": "Done"}],
            },
        }
    )


def _request(body: bytes, signature: str) -> dict[str, Any]:
    return {
        "content": body,
        "headers": {
            "content-type": "application/json",
            "x-hub-signature": signature,
            "x-atlassian-webhook-identifier": uuid.uuid4().hex,
        },
    }


async def closed_loop(url: str, body: bytes, concurrency: int, seconds: float) -> dict[str, Any]:
    signature = sign(SECRET, body)
    latencies: list[float] = []
    codes: dict[str, int] = {}
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def worker() -> None:
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                response = await client.post(url, **_request(body, signature))
                latencies.append((time.perf_counter() - began) * 1000)
                codes[str(response.status_code)] = codes.get(str(response.status_code), 0) + 1

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    acks = sum(n for code, n in codes.items() if code.startswith("2"))
    return {
        "acks_per_s": acks / elapsed,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "statuses": codes,
        "concurrency": concurrency,
    }


async def open_loop(url: str, body: bytes, rate: float, seconds: float) -> dict[str, Any]:
    signature = sign(SECRET, body)
    total = int(rate * seconds)
    latencies: list[float] = []
    codes: dict[str, int] = {}
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=512)) as client:
        start = time.perf_counter() + 0.1

        async def one(i: int) -> None:
            scheduled = start + i / rate
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            try:
                response = await client.post(url, **_request(body, signature))
                code = str(response.status_code)
            except httpx.HTTPError as exc:
                code = type(exc).__name__
            latencies.append((time.perf_counter() - scheduled) * 1000)
            codes[code] = codes.get(code, 0) + 1

        await asyncio.gather(*(one(i) for i in range(total)))
        elapsed = time.perf_counter() - start
    acks = sum(n for code, n in codes.items() if code.startswith("2"))
    return {
        "offered_per_s": rate,
        "acks_per_s": acks / elapsed,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "statuses": codes,
    }


def client_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench.collector_bench client")
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    body = jira_body()

    async def both() -> dict[str, Any]:
        await closed_loop(args.url, body, 4, 1.0)  # warm up connections and code paths
        return {
            "saturation": await closed_loop(args.url, body, args.concurrency, args.seconds),
            "fixed_rate": await open_loop(args.url, body, args.rate, args.seconds),
        }

    sys.stdout.write(orjson.dumps(asyncio.run(both())).decode() + "\n")


async def collector_throughput(
    backends: Backends, *, rate: float, seconds: float, log_dir: Path
) -> dict[str, Any]:
    dsn = backends.create_database("collector")
    port = free_port()
    env = flowmetrics_env(
        dsn,
        backends.bootstrap,
        "fmbenchcol",
        FLOW_COLLECTOR_PORT=str(port),
        FLOW_JIRA_WEBHOOK_SECRET=SECRET,
    )
    server = flowmetrics_child("collector", "collect", env, log_dir)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=2) as probe:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if (await probe.get("/health")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.popen.poll() is not None or time.monotonic() > deadline:
                    return {"error": f"collector did not start:\n{server.tail()}"}
                await asyncio.sleep(0.2)
        client = bench_child(
            "collector_client",
            "bench.collector_bench",
            [
                "client",
                "--url",
                f"{base}/webhooks/jira",
                "--rate",
                str(rate),
                "--seconds",
                str(seconds),
            ],
            log_dir,
        )
        result = await asyncio.to_thread(client.last_json, seconds * 4 + 120)
        server.sample()
        result["peak_rss_mb"] = round(server.peak_rss / 2**20, 1)
        return result
    finally:
        server.stop()


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"]:
        client_main(sys.argv[2:])
    else:
        raise SystemExit("usage: python -m bench.collector_bench client ... (run via bench.run)")
