"""The benchmark's event generator: deterministic per seed, valid canonical events,
realistic faults, bounded memory and honest expectations for the derived tables."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from datetime import datetime

import pytest

from bench.generator import EventStream, GeneratorConfig, generate, plan_statuses, wire
from schemas.events import parse_event
from schemas.topics import partition_key


@pytest.fixture(scope="module")
def sample() -> list[dict[str, object]]:
    return list(generate(20_000, seed=11))


def test_same_seed_same_bytes() -> None:
    """A seed fixes the stream byte for byte."""
    first = [wire(e) for e in generate(3_000, seed=5)]
    again = [wire(e) for e in generate(3_000, seed=5)]
    other = [wire(e) for e in generate(3_000, seed=6)]
    assert first == again
    assert first != other


def test_every_event_is_a_valid_canonical_event_with_the_key_rule(
    sample: list[dict[str, object]],
) -> None:
    """Each record parses as a canonical event and is keyed as the key rule says."""
    for event in sample:
        key, value = wire(event)
        parsed = parse_event(value)
        assert key.decode() == parsed.key == partition_key(parsed)


def test_items_have_three_to_ten_transitions() -> None:
    """A Jira item's plan plus its initial transition is 3-10 transitions."""
    rng = random.Random(1)
    config = GeneratorConfig()
    lengths = Counter(len(plan_statuses(rng, config)) + 1 for _ in range(20_000))
    assert min(lengths) >= 3
    assert max(lengths) == 10
    assert len(lengths) >= 6  # a spread, not one fixed path


def test_stream_has_the_faults_and_domains_a_real_one_has(
    sample: list[dict[str, object]],
) -> None:
    """Reopens, late (out-of-order) and duplicated events, commits, deployments, teams."""
    types = Counter(str(e["type"]) for e in sample)
    assert types["change.committed"] and types["deployment.recorded"]
    assert types["pull_request.merged"] and types["incident.opened"]
    assert any(e.get("to_status") == "Reopened" for e in sample)
    ids = Counter(str(e["event_id"]) for e in sample)
    assert sum(1 for n in ids.values() if n > 1) > 100
    teams = {e["team"] for e in sample if e["type"] == "work_item.upserted"}
    assert len(teams) >= 6
    # late: an item's event received after a later-occurring event of the same item
    latest: dict[str, datetime] = {}
    out_of_order = 0
    for e in sample:
        if not str(e["type"]).startswith("work_item."):
            continue
        at = datetime.fromisoformat(str(e["occurred_at"]))
        key = str(e["item_id"])
        if key in latest and at < latest[key]:
            out_of_order += 1
        latest[key] = max(at, latest.get(key, at))
    assert out_of_order > 50


def test_stats_match_the_set_semantics_of_the_stream(sample: list[dict[str, object]]) -> None:
    """The expected row counts equal a brute-force count over the emitted events."""
    stream = EventStream(GeneratorConfig(seed=11))
    list(stream.take(20_000))
    events: dict[str, dict[str, object]] = {}
    for e in sample:
        if str(e["type"]).startswith("work_item."):
            events.setdefault(str(e["event_id"]), e)
    by_item: dict[str, list[dict[str, object]]] = defaultdict(list)
    for e in events.values():
        by_item[str(e["item_id"])].append(e)
    live = {i: es for i, es in by_item.items() if all(e["type"] != "work_item.deleted" for e in es)}
    assert stream.stats.work_item_events == len(events)
    assert stream.stats.work_items == len(live)
    assert stream.stats.transitions == sum(
        1 for es in live.values() for e in es if e["type"] == "work_item.transitioned"
    )
    assert stream.stats.events == 20_000


def test_memory_is_bounded_by_items_in_flight_not_stream_length() -> None:
    """The pending heap does not grow with the number of events taken."""
    stream = EventStream()
    sizes = []
    for i, _ in enumerate(stream.take(120_000)):
        if i in (40_000, 80_000, 119_999):
            sizes.append(stream.pending)
    assert max(sizes) < 1.3 * min(sizes)
