"""The Metabase provisioning script, against a small fake of the endpoints it calls.

The fake checks each request the way Metabase's API schema does for the fields
the script relies on, and records every call, so the tests read as "what did
the script ask Metabase to do".
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import SecretStr

with warnings.catch_warnings():
    # Starlette announces a future move of its TestClient off httpx; it runs on it today.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

from infra.metabase.dashboard import CARDS, COLLECTION_NAME, DASHBOARD_NAME
from infra.metabase.provision import (
    MetabaseClient,
    MetabaseError,
    MetabaseSettings,
    provision,
)

ADMIN = ("admin@example.org", "s3cret-pass")


@dataclass
class FakeMetabase:
    """Metabase's state as far as the script can see it."""

    has_user: bool = True
    calls: list[tuple[str, str]] = field(default_factory=list)
    databases: dict[int, dict[str, Any]] = field(default_factory=dict)
    collections: dict[int, dict[str, Any]] = field(default_factory=dict)
    cards: dict[int, dict[str, Any]] = field(default_factory=dict)
    dashboards: dict[int, dict[str, Any]] = field(default_factory=dict)
    next_id: int = 1

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id


def require(body: dict[str, Any], *keys: str) -> None:
    missing = [k for k in keys if k not in body]
    if missing:
        raise HTTPException(400, {"errors": {k: "value must be present" for k in missing}})


def fake_app(state: FakeMetabase) -> FastAPI:
    app = FastAPI()

    @app.middleware("http")
    async def record(request: Request, call_next: Any) -> Any:
        state.calls.append((request.method, request.url.path))
        public = request.url.path.startswith(("/api/session", "/api/setup"))
        if not public and request.headers.get("x-metabase-session") != "session-1":
            return PlainTextResponse("Unauthenticated", status_code=401)
        return await call_next(request)

    @app.get("/api/session/properties")
    def properties() -> dict[str, Any]:
        return {"has-user-setup": state.has_user,
                "setup-token": None if state.has_user else "setup-token-1"}

    @app.post("/api/setup")
    def setup(body: dict[str, Any]) -> dict[str, Any]:
        require(body, "token", "user", "prefs")
        if body["token"] != "setup-token-1" or state.has_user:
            raise HTTPException(403, "Token does not match the setup token.")
        require(body["user"], "email", "password")
        state.has_user = True
        return {"id": "session-1"}

    @app.post("/api/session")
    def session(body: dict[str, Any]) -> dict[str, Any]:
        require(body, "username", "password")
        if (body["username"], body["password"]) != ADMIN:
            raise HTTPException(401, {"errors": {"password": "did not match stored password"}})
        return {"id": "session-1"}

    @app.get("/api/database")
    def databases() -> dict[str, Any]:
        return {"data": list(state.databases.values()), "total": len(state.databases)}

    @app.post("/api/database")
    def add_database(body: dict[str, Any]) -> dict[str, Any]:
        require(body, "name", "engine", "details")
        database = {**body, "id": state.new_id()}
        state.databases[database["id"]] = database
        return database

    @app.put("/api/database/{database_id}")
    def update_database(database_id: int, body: dict[str, Any]) -> dict[str, Any]:
        state.databases[database_id].update(body)
        return state.databases[database_id]

    @app.get("/api/collection")
    def collections() -> list[dict[str, Any]]:
        return [{"id": "root", "name": "Our analytics"}, *state.collections.values()]

    @app.post("/api/collection")
    def add_collection(body: dict[str, Any]) -> dict[str, Any]:
        require(body, "name")
        collection = {**body, "id": state.new_id(), "archived": False}
        state.collections[collection["id"]] = collection
        return collection

    @app.get("/api/collection/{collection_id}/items")
    def items(collection_id: int, models: list[str] = Query(default=[])) -> dict[str, Any]:
        found = [{"id": c["id"], "name": c["name"], "model": "card"}
                 for c in state.cards.values() if c["collection_id"] == collection_id]
        found += [{"id": d["id"], "name": d["name"], "model": "dashboard"}
                  for d in state.dashboards.values() if d["collection_id"] == collection_id]
        return {"data": [i for i in found if not models or i["model"] in models]}

    def check_card(body: dict[str, Any]) -> None:
        require(body, "name", "display", "dataset_query", "visualization_settings")
        query = body["dataset_query"]
        require(query, "type", "database", "native")
        if query["database"] not in state.databases:
            raise HTTPException(400, "unknown database")

    @app.post("/api/card")
    def add_card(body: dict[str, Any]) -> dict[str, Any]:
        check_card(body)
        card = {**body, "id": state.new_id()}
        state.cards[card["id"]] = card
        return card

    @app.put("/api/card/{card_id}")
    def update_card(card_id: int, body: dict[str, Any]) -> dict[str, Any]:
        check_card(body)
        state.cards[card_id].update(body)
        return state.cards[card_id]

    @app.post("/api/dashboard")
    def add_dashboard(body: dict[str, Any]) -> dict[str, Any]:
        require(body, "name")
        dashboard = {**body, "id": state.new_id(), "dashcards": [], "parameters": []}
        state.dashboards[dashboard["id"]] = dashboard
        return dashboard

    @app.get("/api/dashboard/{dashboard_id}")
    def dashboard(dashboard_id: int) -> dict[str, Any]:
        return state.dashboards[dashboard_id]

    @app.put("/api/dashboard/{dashboard_id}")
    def update_dashboard(dashboard_id: int, body: dict[str, Any]) -> dict[str, Any]:
        current = state.dashboards[dashboard_id]
        kept = {d["id"] for d in current["dashcards"]}
        dashcards = []
        for d in body.get("dashcards", current["dashcards"]):
            require(d, "id", "card_id", "row", "col", "size_x", "size_y")
            if d["card_id"] not in state.cards or (d["id"] > 0 and d["id"] not in kept):
                raise HTTPException(400, "bad dashcard")
            dashcards.append({**d, "id": d["id"] if d["id"] > 0 else state.new_id()})
        current.update({**body, "dashcards": dashcards})
        return current

    return app


@pytest.fixture
def metabase() -> Iterator[tuple[FakeMetabase, MetabaseClient]]:
    state = FakeMetabase()
    with TestClient(fake_app(state), base_url="http://metabase.test") as http:
        yield state, MetabaseClient(http)


def settings(**overrides: Any) -> MetabaseSettings:
    values: dict[str, Any] = {
        "admin_email": ADMIN[0],
        "admin_password": SecretStr(ADMIN[1]),
        "db_password": SecretStr("reader-pass"),
        **overrides,
    }
    return MetabaseSettings(**values)


def test_provisions_database_collection_cards_and_dashboard(
    metabase: tuple[FakeMetabase, MetabaseClient],
) -> None:
    """One reader connection synced to analytics only, every card, one dashboard holding them."""
    state, client = metabase
    done = provision(client, settings())
    [database] = state.databases.values()
    assert database["engine"] == "postgres"
    assert database["details"]["user"] == "flowmetrics_reader"
    assert database["details"]["password"] == "reader-pass"
    assert database["details"]["schema-filters-patterns"] == "analytics"
    assert [c["name"] for c in state.collections.values()] == [COLLECTION_NAME]
    assert sorted(c["name"] for c in state.cards.values()) == sorted(c.name for c in CARDS)
    for card in state.cards.values():
        native = card["dataset_query"]["native"]
        assert "analytics." in native["query"]
        assert "public." not in native["query"]
        assert set(native["template-tags"]) == {"team"}
    [dashboard] = state.dashboards.values()
    assert dashboard["name"] == DASHBOARD_NAME
    assert {d["card_id"] for d in dashboard["dashcards"]} == set(done.card_ids.values())
    assert all(d["parameter_mappings"][0]["parameter_id"] == "team"
               for d in dashboard["dashcards"])
    assert [p["slug"] for p in dashboard["parameters"]] == ["team"]


def test_rerunning_updates_in_place(metabase: tuple[FakeMetabase, MetabaseClient]) -> None:
    """A second run creates nothing new: same ids, dashcards kept, objects PUT not POSTed."""
    state, client = metabase
    first = provision(client, settings())
    dashcard_ids = {d["id"] for d in state.dashboards[first.dashboard_id]["dashcards"]}
    state.calls.clear()
    second = provision(client, settings())
    assert second == first
    assert len(state.cards) == len(CARDS) and len(state.dashboards) == 1
    assert {d["id"] for d in state.dashboards[first.dashboard_id]["dashcards"]} == dashcard_ids
    posts = {path for method, path in state.calls if method == "POST"}
    assert posts == {"/api/session"}


def test_fresh_metabase_is_set_up_first(metabase: tuple[FakeMetabase, MetabaseClient]) -> None:
    """Without an admin yet, the setup token creates one (and its session) before anything else."""
    state, client = metabase
    state.has_user = False
    provision(client, settings())
    assert state.calls[:2] == [("GET", "/api/session/properties"), ("POST", "/api/setup")]
    assert ("POST", "/api/session") not in state.calls


def test_refusal_names_the_call(metabase: tuple[FakeMetabase, MetabaseClient]) -> None:
    """A wrong password stops provisioning with the method, path and status."""
    _, client = metabase
    with pytest.raises(MetabaseError, match=r"POST /api/session: 401"):
        provision(client, settings(admin_password=SecretStr("wrong")))
