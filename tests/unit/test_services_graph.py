"""The service graph's pure rules: edges from Prometheus answers, staleness, transitive
dependencies and attribution through them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infra.services_catalog import CatalogError, load_catalog
from processor.services_graph import (
    Candidate,
    Edge,
    PrometheusAnswerError,
    attribute,
    dependencies,
    dependents,
    edges_from_vector,
)
from tests.fake_prometheus import error, series, vector

T = datetime(2026, 3, 4, 12, tzinfo=UTC)
WEEK = timedelta(days=7)
WINDOW = timedelta(hours=48)


def edge(client: str, server: str, first: datetime = T - timedelta(days=30),
         last: datetime = T) -> Edge:
    return Edge(client, server, first, last)


def deployed(deployment_id: str, service: str, hours_before: float) -> Candidate:
    finished = T - timedelta(hours=hours_before)
    return Candidate(deployment_id, service, finished, finished - timedelta(minutes=5))


def test_each_pair_becomes_one_edge_event_stamped_with_the_sample_time() -> None:
    """Self-loops and series missing client or server are dropped; a pair's series merge."""
    answer = vector(
        T,
        series("checkout", "payments"),
        series("checkout", "payments", "messaging_system"),
        series("payments", "ledger", "messaging_system"),
        series("checkout", "checkout"),
        series(None, "payments"),
        series("checkout", ""),
        series("checkout", "postgres", None),
    ).body
    edges = edges_from_vector(answer, received_at=T + timedelta(minutes=1))
    assert [(e.client, e.server, e.connection_type, e.asynchronous) for e in edges] == [
        ("checkout", "payments", ",messaging_system", False),
        ("checkout", "postgres", "", False),
        ("payments", "ledger", "messaging_system", True),
    ]
    assert {e.occurred_at for e in edges} == {T}
    assert {e.key for e in edges} == {
        "service_edge:checkout->payments", "service_edge:checkout->postgres",
        "service_edge:payments->ledger"}


def test_rescrapes_in_one_slot_share_an_event_id() -> None:
    """An hour's scrapes of one pair fold once; the next hour is a new observation."""
    ids = [edges_from_vector(vector(at, series("a", "b")).body, received_at=at)[0].event_id
           for at in (T, T + timedelta(minutes=59), T + timedelta(minutes=60))]
    assert ids[0] == ids[1] != ids[2]


def test_an_error_answer_is_refused() -> None:
    """Prometheus' ``status: error`` and non-vector answers are errors, not empty graphs."""
    with pytest.raises(PrometheusAnswerError, match="unavailable"):
        edges_from_vector(error().body, received_at=T)
    matrix = {"status": "success", "data": {"resultType": "matrix", "result": []}}
    with pytest.raises(PrometheusAnswerError, match="vector"):
        edges_from_vector(matrix, received_at=T)


def test_stale_is_relative_to_the_reference_time() -> None:
    """An edge not seen for 7 days before the graph's latest observation is stale."""
    e = edge("a", "b", last=T - timedelta(days=8))
    assert e.stale(T, WEEK) and not e.stale(T - timedelta(days=2), WEEK)


def test_dependencies_are_transitive_by_shortest_path_up_to_the_depth() -> None:
    """Cycles end, each service comes once by its shortest path, nothing beyond the depth."""
    graph = [edge("checkout", "payments"), edge("payments", "ledger"),
             edge("ledger", "vault"), edge("checkout", "ledger"), edge("ledger", "checkout")]
    found = dependencies(graph, "checkout", 2)
    assert [(d.service, d.depth, d.path) for d in found] == [
        ("ledger", 1, ("checkout", "ledger")),
        ("payments", 1, ("checkout", "payments")),
        ("vault", 2, ("checkout", "ledger", "vault")),
    ]
    assert [d.service for d in dependencies(graph, "checkout", 1)] == ["ledger", "payments"]
    assert dependents(graph, {"vault"}, 1) == {"vault", "ledger"}
    assert dependents(graph, {"vault"}, 2) == {"vault", "ledger", "payments", "checkout"}


def test_an_incident_goes_to_a_dependency_deployment_through_the_edge() -> None:
    """checkout's incident: payments deployed 1 h before, checkout itself 5 h before."""
    both = [deployed("c1", "checkout", 5), deployed("p1", "payments", 1)]
    chosen = attribute("checkout", T, both, [edge("checkout", "payments")], depth=2,
                       window=WINDOW, stale_after=WEEK)
    assert chosen is not None and (chosen.deployment_id, chosen.path) == (
        "p1", ("checkout", "payments"))


def test_no_attribution_through_an_edge_stale_at_the_incident() -> None:
    """An edge last seen more than 7 days before the incident (or first seen more than
    7 days after it) is not followed."""
    candidates = [deployed("p1", "payments", 1)]
    for e in (edge("checkout", "payments", last=T - timedelta(days=8)),
              edge("checkout", "payments", first=T + timedelta(days=8),
                   last=T + timedelta(days=9))):
        assert attribute("checkout", T, candidates, [e], depth=2, window=WINDOW,
                         stale_after=WEEK) is None


def test_no_attribution_beyond_the_depth_or_outside_the_window() -> None:
    """Three hops with depth 2, depth 0 (same service), or a deployment 49 h before: nobody."""
    chain = [edge("checkout", "payments"), edge("payments", "ledger"), edge("ledger", "vault")]
    vault = [deployed("v1", "vault", 1)]
    assert attribute("checkout", T, vault, chain, depth=2, window=WINDOW,
                     stale_after=WEEK) is None
    ledger = [deployed("l1", "ledger", 1)]
    assert attribute("checkout", T, ledger, chain, depth=0, window=WINDOW,
                     stale_after=WEEK) is None
    chosen = attribute("checkout", T, ledger, chain, depth=2, window=WINDOW, stale_after=WEEK)
    assert chosen is not None and chosen.path == ("checkout", "payments", "ledger")
    late = [deployed("p1", "payments", 49)]
    assert attribute("checkout", T, late, chain, depth=2, window=WINDOW,
                     stale_after=WEEK) is None


def test_a_tie_on_finish_time_goes_to_the_shorter_path() -> None:
    """Own service and a dependency finished at the same instant: the own service wins."""
    graph = [edge("checkout", "payments")]
    same_time = [deployed("p1", "payments", 1), deployed("c1", "checkout", 1)]
    chosen = attribute("checkout", T, same_time, graph, depth=2, window=WINDOW,
                       stale_after=WEEK)
    assert chosen is not None and chosen.deployment_id == "c1"


SERVICES = ["checkout", "payments", "ledger", "vault"]


@given(
    st.lists(st.tuples(st.sampled_from(SERVICES), st.sampled_from(SERVICES),
                       st.integers(-12, 12)), max_size=8),
    st.lists(st.tuples(st.sampled_from(SERVICES), st.integers(0, 60)), max_size=8),
    st.randoms(use_true_random=False),
)
def test_attribution_ignores_input_order(
    raw_edges: list[tuple[str, str, int]], raw_deploys: list[tuple[str, int]], rnd: object
) -> None:
    """Any order of the same edges and deployments gives the same attribution."""
    graph = [edge(c, s, last=T + timedelta(days=d)) for c, s, d in raw_edges if c != s]
    candidates = [deployed(f"d{i}", s, h) for i, (s, h) in enumerate(raw_deploys)]
    first = attribute("checkout", T, candidates, graph, depth=2, window=WINDOW,
                      stale_after=WEEK)
    rnd.shuffle(graph)  # type: ignore[attr-defined]
    rnd.shuffle(candidates)  # type: ignore[attr-defined]
    assert attribute("checkout", T, candidates, graph, depth=2, window=WINDOW,
                     stale_after=WEEK) == first


def test_catalog_file_maps_repositories_and_declares_services(tmp_path: Path) -> None:
    """The catalog names each repository's service and becomes service.declared events."""
    path = tmp_path / "services.toml"
    path.write_text('[services.payments]\nteam = "money"\nrepos = ["acme/payments"]\n'
                    'jira_projects = ["PAY"]\n[services.checkout]\nrepos = ["acme/shop"]\n')
    catalog = load_catalog(path)
    assert catalog.service_for_repo() == {"acme/payments": "payments", "acme/shop": "checkout"}
    events = catalog.events(T)
    assert [(e.service, e.team, e.repos, e.jira_projects) for e in events] == [
        ("checkout", "", ("acme/shop",), ()),
        ("payments", "money", ("acme/payments",), ("PAY",)),
    ]
    assert [e.event_id for e in catalog.events(T + WEEK)] == [e.event_id for e in events]


@pytest.mark.parametrize("text, problem", [
    ('[services.a]\nowner = "x"\n', "unknown keys"),
    ('[services.a]\nrepos = "acme/a"\n', "services.a.repos"),
    ('[services.a]\nrepos = ["r"]\n[services.b]\nrepos = ["r"]\n', "feeds both"),
    ('[teams]\n', "unknown keys"),
])
def test_a_bad_catalog_stops_start_up_naming_the_entry(
    tmp_path: Path, text: str, problem: str
) -> None:
    """Unknown keys, wrong types and a repository claimed twice are refused."""
    path = tmp_path / "services.toml"
    path.write_text(text)
    with pytest.raises(CatalogError, match=problem):
        load_catalog(path)
