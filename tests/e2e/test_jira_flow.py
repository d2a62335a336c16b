"""Jira → flow metrics, end to end, on the recorded Jira deliveries.

Hand-computed expectations (times UTC, from the fixture bodies):

- TES-41 (Cloud): created 2019-02-16 03:01:52.971 in To Do; In Progress at
  03:14:22.039; Done at 03:15:40.507; back to To Do at 03:17:06.531.
  Cycle time 78.468 s, lead time 827.536 s — until the reopen, after which it
  is work in progress again and has no completion.
- TES-4 (Server): created 2019-08-12 22:14:23.580; the first delivery is
  In Progress → Resolved at 23:23:02.025, so it was in progress since creation;
  Reopened 2019-08-14 03:01:43.657, In Progress 03:02:33.680, Closed
  03:07:58.358 (the Resolved in between was never delivered). Cycle and lead
  time 104,014.778 s.
"""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest

from tests.fixtures import load_fixture
from tests.pipeline import Pipeline

pytestmark = pytest.mark.e2e

TES41 = [
    "jira/issue_created/cloud_TES-41_created.json",
    "jira/issue_updated/cloud_TES-41_status_todo_to_inprogress.json",
    "jira/issue_updated/cloud_TES-41_status_inprogress_to_done.json",
]
TES41_REOPEN = "jira/issue_updated/cloud_TES-41_status_done_to_todo.json"
TES4 = [
    "jira/issue_updated/server_TES-4_status_inprogress_to_resolved.json",
    "jira/issue_updated/server_TES-4_status_resolved_to_reopened.json",
    "jira/issue_updated/server_TES-4_status_reopened_to_inprogress.json",
    "jira/issue_updated/server_TES-4_status_resolved_to_closed.json",
]
FEB = {"start": "2019-02-16T00:00:00Z", "end": "2019-02-17T00:00:00Z"}
AUG = {"start": "2019-08-01T00:00:00Z", "end": "2019-09-01T00:00:00Z"}


def as_issue(body: dict[str, Any], issue_id: str, key: str) -> dict[str, Any]:
    """The same delivery, about another issue (ids and keys rewritten)."""
    clone = copy.deepcopy(body)
    clone["issue"]["id"] = issue_id
    clone["issue"]["key"] = key
    if "changelog" in clone and isinstance(clone["changelog"], dict):
        clone["changelog"]["id"] = f"{issue_id}{clone['changelog'].get('id', '')}"
    return clone


async def post_all(
    pipeline: Pipeline, bodies: list[dict[str, Any]], tag: str, expect: int = 202
) -> None:
    for i, body in enumerate(bodies):
        response = await pipeline.post_jira(body, delivery_id=f"{tag}-{i}")
        assert response.status_code == expect, response.text


async def test_tes41_cycle_and_lead_time(pipeline: Pipeline) -> None:
    """Created → In Progress → Done gives the hand-computed cycle and lead time."""
    await post_all(pipeline, [load_fixture(f) for f in TES41], "tes41")
    await pipeline.settle()
    m = await pipeline.get("/api/v1/metrics", **FEB)
    assert m["throughput"] == 1 and m["wip"] == 0
    assert m["cycle_time_hours"]["p50"] == pytest.approx(78.468 / 3600, abs=1e-4)
    assert m["lead_time_hours"]["p50"] == pytest.approx(827.536 / 3600, abs=1e-4)


async def test_reopened_and_not_redone_is_wip_again(pipeline: Pipeline) -> None:
    """Done → To Do removes the completion and counts the item as WIP."""
    await post_all(pipeline, [load_fixture(f) for f in [*TES41, TES41_REOPEN]], "reopen")
    await pipeline.settle()
    m = await pipeline.get("/api/v1/metrics", **FEB)
    assert m["throughput"] == 0 and m["wip"] == 1
    assert m["cycle_time_hours"] == {"mean": None, "p50": None, "p85": None, "p95": None}
    wip = await pipeline.get("/api/v1/work-items", state="wip")
    assert [i["display_key"] for i in wip["items"]] == ["TES-41"]


async def test_server_sequence_with_a_gap_reopen_and_redo(pipeline: Pipeline) -> None:
    """TES-4: reopened and redone completes at the final Closed; the gap invents no time."""
    await post_all(pipeline, [load_fixture(f) for f in TES4], "tes4")
    await pipeline.settle()
    m = await pipeline.get("/api/v1/metrics", **AUG)
    assert m["throughput"] == 1
    assert m["cycle_time_hours"]["p50"] == pytest.approx(104_014.778 / 3600, abs=1e-4)
    history = await pipeline.get("/api/v1/work-items/TES-4/history")
    assert [t["to_stage"] for t in history["transitions"]] == [
        "Production",
        "Backlog",
        "Development",
        "Production",
    ]
    assert history["item"]["completed_at"].startswith("2019-08-14T03:07:58.358")


async def test_duplicates_and_reverse_order_change_nothing(pipeline: Pipeline) -> None:
    """Every delivery twice (retries with new ids too), newest first: the same numbers."""
    bodies = [load_fixture(f) for f in reversed(TES4)]
    await post_all(pipeline, bodies, "dup")
    await post_all(pipeline, bodies, "dup", expect=200)  # a Jira retry: same identifier
    await post_all(pipeline, bodies, "dup-again")  # a re-sent delivery: new identifier
    await pipeline.settle()
    m = await pipeline.get("/api/v1/metrics", **AUG)
    assert m["throughput"] == 1
    assert m["cycle_time_hours"]["p50"] == pytest.approx(104_014.778 / 3600, abs=1e-4)
    history = await pipeline.get("/api/v1/work-items/TES-4/history")
    assert len(history["transitions"]) == 4


async def test_skipping_stages_starts_the_clock_at_the_first_later_stage(
    pipeline: Pipeline,
) -> None:
    """To Do → Done directly: completed, with zero cycle time."""
    created = as_issue(load_fixture(TES41[0]), "990001", "SKIP-1")
    done = as_issue(load_fixture(TES41[2]), "990001", "SKIP-1")
    done["changelog"]["items"] = [
        {**i, "fromString": "To Do"} for i in done["changelog"]["items"] if i["field"] == "status"
    ]
    await post_all(pipeline, [created, done], "skip")
    await pipeline.settle()
    m = await pipeline.get("/api/v1/metrics", **FEB)
    assert m["throughput"] == 1 and m["cycle_time_hours"]["p50"] == 0


async def test_deleted_item_disappears_and_its_history_is_404(pipeline: Pipeline) -> None:
    """jira:issue_deleted removes the item from every metric; its history answers 404."""
    await post_all(pipeline, [load_fixture(f) for f in TES41], "del")
    deleted = load_fixture("jira/issue_deleted/cloud_IDT-19_deleted.json")
    deleted["issue"]["id"], deleted["issue"]["key"] = "10040", "TES-41"
    await post_all(pipeline, [deleted], "del-x")
    await pipeline.settle()
    m = await pipeline.get("/api/v1/metrics", **FEB)
    assert m["throughput"] == 0 and m["wip"] == 0
    response = await pipeline.api.get("/api/v1/work-items/TES-41/history")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_any_permutation_and_duplication_gives_the_same_numbers(
    pipeline: Pipeline,
) -> None:
    """Twelve orderings (with duplicates) of one issue's deliveries fold to identical rows."""
    base = [
        load_fixture(f)
        for f in [*TES41, TES41_REOPEN, "jira/issue_updated/cloud_TES-41_issuetype_changed.json"]
    ]
    # TES-41 redone after the reopen, so it ends completed.
    redo = copy.deepcopy(load_fixture(TES41[2]))
    redo["timestamp"] += 10 * 60 * 1000
    redo["changelog"]["id"] = "99999"
    redo["changelog"]["items"] = [
        {**i, "fromString": "To Do"} for i in redo["changelog"]["items"] if i["field"] == "status"
    ]
    base.append(redo)
    rng = random.Random(20261122)
    orders = [list(range(len(base)))]
    orders += [rng.sample(range(len(base)), len(base)) for _ in range(11)]
    for n, order in enumerate(orders):
        picks = order + rng.sample(order, 2)  # and two duplicates
        bodies = [as_issue(base[i], f"77{n:03d}", f"PERM-{n}") for i in picks]
        await post_all(pipeline, bodies, f"perm{n}")
    await pipeline.settle()
    page = await pipeline.get("/api/v1/work-items", limit=100)
    rows = {i["display_key"]: i for i in page["items"]}
    assert len(rows) == len(orders)
    comparable = [
        {k: v for k, v in row.items() if k not in ("item_id", "display_key", "url")}
        for row in rows.values()
    ]
    assert all(c == comparable[0] for c in comparable), comparable
    histories = []
    for n in range(len(orders)):
        stays = (await pipeline.get(f"/api/v1/work-items/PERM-{n}/history"))["stays"]
        # An open stay's hours run until now(), which moves between requests.
        histories.append([{**s, "hours": s["hours"] if s["exited_at"] else None} for s in stays])
    assert all(h == histories[0] for h in histories)
    m = await pipeline.get("/api/v1/metrics", **FEB)
    assert m["throughput"] == len(orders)
    assert m["cycle_time_hours"]["p50"] == m["cycle_time_hours"]["p95"]
