"""Provision Metabase through its REST API: the flowmetrics database connection (as
the read-only ``flowmetrics_reader``, synced to the ``analytics`` schema only), a
collection, the cards and the dashboard of :mod:`infra.metabase.dashboard`.

Idempotent: everything is found by name and updated in place, so re-running
after an upgrade changes the dashboard rather than duplicating it. On a fresh
Metabase (no admin yet) it completes the setup with the given admin first.

    python -m infra.metabase.provision          # settings from FLOW_METABASE_* variables

Endpoints used (Metabase v0.47+): ``GET /api/session/properties``,
``POST /api/setup``, ``POST /api/session``, ``GET|POST /api/database``,
``PUT /api/database/:id``, ``GET|POST /api/collection``,
``GET /api/collection/:id/items``, ``POST /api/card``, ``PUT /api/card/:id``,
``POST /api/dashboard``, ``GET|PUT /api/dashboard/:id`` (``dashcards``: the full
desired set; new ones carry negative ids).

Exceptions::

    Exception
    └── MetabaseError   Metabase refused a call; the message names method, path and status
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from infra.metabase.dashboard import (
    CARDS,
    COLLECTION_NAME,
    DASHBOARD_DESCRIPTION,
    DASHBOARD_NAME,
    TEAM_TAG,
    Card,
    dashboard_parameters,
    template_tags,
)


class MetabaseError(Exception):
    """A Metabase call failed (method, path, status and Metabase's message)."""


class MetabaseSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLOW_METABASE_", extra="ignore")

    url: str = "http://localhost:3000"
    admin_email: str = "admin@flowmetrics.local"
    admin_password: SecretStr
    site_name: str = "flowmetrics"
    # The connection Metabase opens to flowmetrics' database (as seen from Metabase).
    database_name: str = "flowmetrics"
    db_host: str = "timescaledb"
    db_port: int = 5432
    db_name: str = "flowmetrics"
    db_user: str = "flowmetrics_reader"
    db_password: SecretStr | None = None
    db_ssl: bool = False


@dataclass(frozen=True)
class Provisioned:
    database_id: int
    collection_id: int
    card_ids: dict[str, int]
    dashboard_id: int


class MetabaseClient:
    """A thin client over one ``httpx.Client`` whose ``base_url`` is Metabase's."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http

    def call(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        try:
            response = self.http.request(method, path, json=body, params=params or None)
        except httpx.HTTPError as exc:
            raise MetabaseError(f"{method} {path}: {exc}") from exc
        if response.status_code >= 400:
            raise MetabaseError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json() if response.content else None

    def log_in(self, settings: MetabaseSettings) -> None:
        """Complete the first-run setup if needed, then keep a session for later calls."""
        properties = self.call("GET", "/api/session/properties")
        password = settings.admin_password.get_secret_value()
        if not properties.get("has-user-setup") and properties.get("setup-token"):
            session = self.call("POST", "/api/setup", {
                "token": properties["setup-token"],
                "user": {"email": settings.admin_email, "password": password,
                         "first_name": "flowmetrics", "last_name": "admin",
                         "site_name": settings.site_name},
                "prefs": {"site_name": settings.site_name, "allow_tracking": False},
            })
        else:
            session = self.call("POST", "/api/session",
                                {"username": settings.admin_email, "password": password})
        self.http.headers["X-Metabase-Session"] = str(session["id"])


def _listing(payload: Any) -> list[dict[str, Any]]:
    """Metabase lists come as a bare array or as ``{"data": [...]}``, by endpoint and version."""
    if isinstance(payload, dict):
        payload = payload.get("data", [])
    return [item for item in payload if isinstance(item, dict)]


def database_payload(settings: MetabaseSettings) -> dict[str, Any]:
    details: dict[str, Any] = {
        "host": settings.db_host,
        "port": settings.db_port,
        "dbname": settings.db_name,
        "user": settings.db_user,
        "ssl": settings.db_ssl,
        # Sync only the contract schema; the reader cannot see the rest anyway.
        "schema-filters-type": "inclusion",
        "schema-filters-patterns": "analytics",
    }
    if settings.db_password is not None:
        details["password"] = settings.db_password.get_secret_value()
    return {"engine": "postgres", "name": settings.database_name, "details": details,
            "is_full_sync": True}


def card_payload(card: Card, database_id: int, collection_id: int) -> dict[str, Any]:
    return {
        "name": card.name,
        "description": card.description,
        "display": card.display,
        "collection_id": collection_id,
        "visualization_settings": card.visualization,
        "dataset_query": {
            "type": "native",
            "database": database_id,
            "native": {"query": card.sql.strip(), "template-tags": template_tags()},
        },
    }


def dashcards(cards: tuple[Card, ...], card_ids: dict[str, int],
              existing: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The full desired set: a card already on the dashboard keeps its dashcard id."""
    current = {d.get("card_id"): d.get("id") for d in existing}
    out: list[dict[str, Any]] = []
    for n, card in enumerate(cards, start=1):
        card_id = card_ids[card.name]
        out.append({
            "id": current.get(card_id) or -n,
            "card_id": card_id,
            "row": card.row,
            "col": card.col,
            "size_x": card.size_x,
            "size_y": card.size_y,
            "series": [],
            "visualization_settings": {},
            "parameter_mappings": [{
                "parameter_id": TEAM_TAG,
                "card_id": card_id,
                "target": ["variable", ["template-tag", TEAM_TAG]],
            }],
        })
    return out


def provision(client: MetabaseClient, settings: MetabaseSettings) -> Provisioned:
    client.log_in(settings)

    payload = database_payload(settings)
    found = [d for d in _listing(client.call("GET", "/api/database"))
             if d.get("name") == settings.database_name]
    if found:
        database_id = int(found[0]["id"])
        client.call("PUT", f"/api/database/{database_id}", payload)
    else:
        database_id = int(client.call("POST", "/api/database", payload)["id"])

    collections = [c for c in _listing(client.call("GET", "/api/collection"))
                   if c.get("name") == COLLECTION_NAME and not c.get("archived")]
    if collections:
        collection_id = int(collections[0]["id"])
    else:
        collection_id = int(client.call("POST", "/api/collection",
                                        {"name": COLLECTION_NAME, "parent_id": None})["id"])

    items = _listing(client.call("GET", f"/api/collection/{collection_id}/items",
                                 models=["card", "dashboard"]))
    cards_by_name = {i["name"]: int(i["id"]) for i in items if i.get("model") == "card"}
    card_ids: dict[str, int] = {}
    for card in CARDS:
        body = card_payload(card, database_id, collection_id)
        if card.name in cards_by_name:
            card_ids[card.name] = cards_by_name[card.name]
            client.call("PUT", f"/api/card/{card_ids[card.name]}", body)
        else:
            card_ids[card.name] = int(client.call("POST", "/api/card", body)["id"])

    dashboards = [i for i in items if i.get("model") == "dashboard"
                  and i.get("name") == DASHBOARD_NAME]
    if dashboards:
        dashboard_id = int(dashboards[0]["id"])
    else:
        dashboard_id = int(client.call("POST", "/api/dashboard", {
            "name": DASHBOARD_NAME,
            "description": DASHBOARD_DESCRIPTION,
            "collection_id": collection_id,
        })["id"])
    existing = client.call("GET", f"/api/dashboard/{dashboard_id}").get("dashcards", [])
    client.call("PUT", f"/api/dashboard/{dashboard_id}", {
        "description": DASHBOARD_DESCRIPTION,
        "parameters": dashboard_parameters(),
        "dashcards": dashcards(CARDS, card_ids, existing),
    })
    return Provisioned(database_id, collection_id, card_ids, dashboard_id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.metabase.provision",
        description="Create or update the flowmetrics database, cards and dashboard in "
        "Metabase. Settings: FLOW_METABASE_* environment variables (see MetabaseSettings).",
    )
    parser.add_argument("--url", help="Metabase base URL (default FLOW_METABASE_URL)")
    args = parser.parse_args(argv)
    settings = MetabaseSettings()  # the admin password comes from the environment
    if args.url:
        settings = settings.model_copy(update={"url": args.url})
    with httpx.Client(base_url=settings.url, timeout=60) as http:
        try:
            done = provision(MetabaseClient(http), settings)
        except MetabaseError as exc:
            print(f"metabase provisioning failed: {exc}", file=sys.stderr)
            return 1
    print(f"dashboard {done.dashboard_id} ({len(done.card_ids)} cards) in collection "
          f"{done.collection_id}: {settings.url}/dashboard/{done.dashboard_id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
