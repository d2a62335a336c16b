"""API keys against the real API, database and CLI; the API's read-only role."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import psycopg
import pytest

from schemas.topics import Topics
from tests.fixtures import fixtures_dir
from tests.integration.security_support import (
    API_ROLE,
    api_role_dsn,
    new_api_key,
    revoke,
    settle_fully,
)
from tests.pipeline import running_pipeline

pytestmark = pytest.mark.integration

CREATED = "jira/issue_created/cloud_TES-41_created.json"


async def test_every_v1_route_but_health_requires_a_key_and_revocation_is_immediate(
    db_dsn: str, kafka_bootstrap: str, topics: Topics
) -> None:
    """With FLOW_API_AUTH on: 401 without a key, 200 with one, 401 again once revoked."""
    key = new_api_key(db_dsn, "dashboards")
    role = api_role_dsn(db_dsn)
    async with running_pipeline(
        db_dsn, kafka_bootstrap, topics, api_auth=True, api_database_url=role
    ) as p:
        response = await p.post_jira((fixtures_dir() / CREATED).read_bytes(), delivery_id="a-1")
        assert response.status_code == 202
        await settle_fully(p)
        bearer = {"authorization": f"Bearer {key.token}"}

        openapi = (await p.api.get("/openapi.json")).json()
        guarded = [
            path
            for path in openapi["paths"]
            if path.startswith("/api/v1") and path != "/api/v1/health"
        ]
        assert "/api/v1/work-items" in guarded
        for path in guarded:
            for operation in openapi["paths"][path].values():
                assert operation["security"] == [{"HTTPBearer": []}], path
                assert {"401", "429"} <= set(operation["responses"]), path
            if "{" in path:
                continue
            denied = await p.api.get(path)
            assert denied.status_code == 401, path
            assert denied.headers["www-authenticate"] == "Bearer"
            assert denied.headers["content-type"] == "application/problem+json"

        assert (await p.api.get("/api/v1/health")).status_code == 200
        assert (await p.api.get("/ready")).status_code == 200
        items = await p.api.get("/api/v1/work-items", headers=bearer)
        assert items.status_code == 200, items.text
        assert [i["display_key"] for i in items.json()["items"]] == ["TES-41"]
        history = await p.api.get("/api/v1/work-items/TES-41/history", headers=bearer)
        assert history.status_code == 200

        assert revoke(db_dsn, key.key_id)
        after = await p.api.get("/api/v1/work-items", headers=bearer)
        assert after.status_code == 401
        assert "revoked" in after.json()["detail"]


async def test_each_key_is_rate_limited_on_its_own(
    db_dsn: str, kafka_bootstrap: str, topics: Topics
) -> None:
    """A key past its burst gets 429 + Retry-After; another key is unaffected."""
    busy, quiet = new_api_key(db_dsn, "busy"), new_api_key(db_dsn, "quiet")
    async with running_pipeline(
        db_dsn, kafka_bootstrap, topics, api_auth=True, api_rate_limit=0.2, api_rate_burst=3
    ) as p:
        statuses = [
            (
                await p.api.get(
                    "/api/v1/work-items", headers={"authorization": f"Bearer {busy.token}"}
                )
            ).status_code
            for _ in range(4)
        ]
        assert statuses == [200, 200, 200, 429]
        limited = await p.api.get(
            "/api/v1/work-items", headers={"authorization": f"Bearer {busy.token}"}
        )
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 5
        assert limited.json()["status"] == 429
        other = await p.api.get(
            "/api/v1/work-items", headers={"authorization": f"Bearer {quiet.token}"}
        )
        assert other.status_code == 200


def test_the_api_role_reads_everything_and_writes_nothing(db_dsn: str) -> None:
    """flowmetrics_api: SELECT on every table and view of public, no write privilege at
    all, and a write fails even in an explicitly read-write transaction."""
    role = api_role_dsn(db_dsn)
    with psycopg.connect(db_dsn) as admin:
        relations = admin.execute(
            "select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
            "where n.nspname = 'public' and c.relkind in ('r', 'v', 'm', 'p')"
        ).fetchall()
        assert len(relations) >= 5
        for (name,) in relations:
            privileges = admin.execute(
                "select has_table_privilege(%(r)s, %(t)s, 'select'), "
                "has_table_privilege(%(r)s, %(t)s, 'insert, update, delete, truncate')",
                {"r": API_ROLE, "t": f"public.{name}"},
            ).fetchone()
            assert privileges == (True, False), name
        attributes = admin.execute(
            "select rolsuper, rolcreaterole, rolcreatedb, rolbypassrls from pg_roles "
            "where rolname = %s",
            (API_ROLE,),
        ).fetchone()
        assert attributes == (False, False, False, False)
    with psycopg.connect(role, autocommit=True) as conn:
        assert conn.execute("show default_transaction_read_only").fetchone() == ("on",)
        conn.execute("select count(*) from work_items, api_keys").fetchone()
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute("set transaction read write")
            conn.execute("insert into api_keys (key_id, name, key_hash) values ('x', 'x', 'x')")


async def test_the_cli_issues_lists_and_revokes_keys_and_stores_only_hashes(
    db_dsn: str, tmp_path: Path
) -> None:
    """`flowmetrics api-key` in production needs only FLOW_DATABASE_URL; the token is
    printed once and is in no column of api_keys."""
    env = {
        **os.environ,
        "FLOW_ENV": "production",
        "FLOW_DATABASE_URL": db_dsn,
        "FLOW_HOME": str(tmp_path),
    }
    for name in ("FLOW_JIRA_WEBHOOK_SECRET", "FLOW_GITHUB_WEBHOOK_SECRET", "FLOW_INGEST_TOKEN"):
        env.pop(name, None)

    async def cli(*args: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "infra.cli",
            "api-key",
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    code, out, err = await cli("create", "grafana")
    assert code == 0, err
    fields = dict(line.split(":", 1) for line in out.strip().splitlines())
    key_id, token = fields["key id"].strip(), fields["token"].strip()
    assert token.startswith(f"fmk_{key_id}_") and "shown only now" in err

    code, listing, _ = await cli("list")
    assert code == 0 and key_id in listing and "grafana" in listing and "active" in listing
    assert token not in listing

    with psycopg.connect(db_dsn) as conn:
        rows = conn.execute("select * from api_keys").fetchall()
    assert len(rows) == 1 and not any(token in str(value) for value in rows[0])

    assert (await cli("revoke", key_id))[0] == 0
    assert (await cli("revoke", key_id))[0] == 1  # already revoked
    code, listing, _ = await cli("list", "--json")
    assert code == 0 and '"revoked_at": null' not in listing
