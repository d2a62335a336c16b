"""Open-loop load generator for the collectors, run as its own process:

    python -m tests.integration.load_generator --url http://127.0.0.1:PORT \\
        --secret S --rate 100 --seconds 60 --prefix LOAD --out report.json

Why this and not wrk: Debian's wrk 4 is closed-loop (each connection waits for
its answer, so a slow server silently lowers the rate) and has no rate option
(wrk2 is not packaged); a Lua script could only replay pre-signed bodies. Here
request *i* is due at ``t0 + i / rate`` whatever happened before (open loop,
no coordinated omission), every body is a distinct, correctly signed Jira
delivery, and the report lists which delivery got which answer — what the
zero-loss check needs.

The traffic: item *k* (issue id ``9<k>``) gets three deliveries — created,
To Do → In Progress, In Progress → Done — interleaved with other items'. Every
``--replay-every``-th slot re-sends an earlier delivery with the same id (a
sender's retry): it must be answered 2xx and change nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from collectors.signatures import sign
from tests.fixtures import load_fixture

STEPS = (
    "jira/issue_created/cloud_TES-41_created.json",
    "jira/issue_updated/cloud_TES-41_status_todo_to_inprogress.json",
    "jira/issue_updated/cloud_TES-41_status_inprogress_to_done.json",
)


@dataclass(frozen=True)
class Delivery:
    delivery_id: str
    body: bytes


def item_deliveries(prefix: str, items: int) -> list[Delivery]:
    """3 deliveries per item, ordered so each item's steps are spread over the run."""
    templates = [load_fixture(path) for path in STEPS]
    out: list[Delivery] = []
    for step, template in enumerate(templates):
        for k in range(items):
            body: dict[str, Any] = copy.deepcopy(template)
            issue_id = f"9{k:07d}"
            body["issue"]["id"] = issue_id
            body["issue"]["key"] = f"{prefix}-{k}"
            if isinstance(body.get("changelog"), dict):
                body["changelog"]["id"] = f"{issue_id}{body['changelog'].get('id', '')}"
            out.append(Delivery(f"{prefix}-{k}-{step}", orjson.dumps(body)))
    return _interleave(out, items)


def _interleave(out: list[Delivery], items: int) -> list[Delivery]:
    """Each item's created, in-progress and done deliveries about items/3 slots apart,
    in that order, interleaved with other items' (as a busy Jira would send them)."""
    by_step = [out[s * items : (s + 1) * items] for s in range(3)]
    lag = max(1, items // 3)
    ordered: list[Delivery] = []
    for slot in range(items + 2 * lag):
        for step in range(3):
            k = slot - step * lag
            if 0 <= k < items:
                ordered.append(by_step[step][k])
    return ordered


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    total = int(args.rate * args.seconds)
    replays = total // args.replay_every if args.replay_every else 0
    items = (total - replays) // 3
    deliveries = item_deliveries(args.prefix, items)
    plan: list[tuple[str, Delivery]] = []
    fresh = iter(deliveries)
    for slot in range(total):
        if args.replay_every and slot % args.replay_every == args.replay_every - 1 and plan:
            plan.append(("replay", plan[slot // 2][1]))
        else:
            nxt = next(fresh, None)
            if nxt is None:
                break
            plan.append(("new", nxt))
    signed = [(kind, d, sign(args.secret, d.body)) for kind, d in plan]

    results: list[dict[str, Any]] = [{} for _ in signed]
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=args.url, timeout=args.timeout, limits=limits) as client:

        async def send(i: int, due: float) -> None:
            kind, delivery, signature = signed[i]
            started = time.perf_counter()
            try:
                response = await client.post(
                    "/webhooks/jira",
                    content=delivery.body,
                    headers={
                        "content-type": "application/json",
                        "x-hub-signature": signature,
                        "x-atlassian-webhook-identifier": delivery.delivery_id,
                    },
                )
                status: int | str = response.status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            done = time.perf_counter()
            results[i] = {
                "kind": kind, "delivery_id": delivery.delivery_id, "status": status,
                "latency": done - started, "lag": started - due,
            }  # fmt: skip

        tasks = []
        t0 = time.perf_counter() + 0.2
        for i in range(len(signed)):
            due = t0 + i / args.rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(i, due)))
        sent_in = time.perf_counter() - t0
        await asyncio.gather(*tasks)

    latencies = sorted(r["latency"] * 1000 for r in results)
    lags = sorted(r["lag"] * 1000 for r in results)
    statuses: dict[str, int] = {}
    for r in results:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    return {
        "rate": args.rate,
        "seconds": args.seconds,
        "requests": len(results),
        "items": items,
        "new_deliveries": sum(r["kind"] == "new" for r in results),
        "replays": sum(r["kind"] == "replay" for r in results),
        "sent_over_seconds": round(sent_in, 3),
        "achieved_rate": round(len(results) / sent_in, 2) if sent_in > 0 else None,
        "statuses": statuses,
        "non_2xx": [r for r in results if not (isinstance(r["status"], int)
                                               and 200 <= r["status"] < 300)][:20],
        "accepted_new": sorted(r["delivery_id"] for r in results
                               if r["kind"] == "new" and r["status"] == 202),
        "latency_ms": {q: round(percentile(latencies, v), 2)
                       for q, v in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))},
        "schedule_lag_ms": {q: round(percentile(lags, v), 2)
                            for q, v in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--prefix", default="LOAD")
    parser.add_argument("--replay-every", type=int, default=25)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    report = asyncio.run(run(args))
    args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
