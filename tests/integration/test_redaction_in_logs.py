"""The real process, logging at DEBUG: no secret, token or signature in any line.

``flowmetrics up`` runs as a subprocess in production mode (so with its real
logging set-up), gets good, badly signed and unauthenticated traffic on every
surface, and its whole stderr and stdout are then searched.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

from api.auth import issue_key
from collectors.signatures import sign
from infra.embedded import free_port
from schemas.topics import Topics
from tests.fixtures import fixtures_dir
from tests.integration.security_support import new_api_key, revoke
from tests.pipeline import wait_for, wait_for_group_caught_up

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
JIRA_SECRET = "jira-secret-9f3c1e7a5b"
GITHUB_SECRET = "github-secret-2d8e4a6c0f"
INGEST_TOKEN = "ingest-token-7b1d9e3f5a"


async def test_no_secret_or_signature_reaches_a_log_line(
    db_dsn: str, kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    """Signed, wrongly signed and unauthenticated requests, keys good and bad: none of
    the secrets, tokens or signatures involved is in the process's output."""
    key, revoked = new_api_key(db_dsn, "dash"), new_api_key(db_dsn, "old")
    revoke(db_dsn, revoked.key_id)
    unknown = issue_key("never stored")
    collector_port, api_port = free_port(), free_port()
    env = {
        **os.environ,
        "FLOW_ENV": "production",
        "FLOW_HOME": str(tmp_path),
        "FLOW_DATABASE_URL": db_dsn,
        "FLOW_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "FLOW_KAFKA_IDEMPOTENT_PRODUCER": "1" if os.environ.get("FLOW_TEST_KAFKA_BOOTSTRAP")
        else "0",
        "FLOW_TOPIC_PREFIX": topics.prefix,
        "FLOW_CONSUMER_GROUP": f"g-{topics.prefix}",
        "FLOW_CONSUMER_SESSION_TIMEOUT_MS": "2000",
        "FLOW_COLLECTOR_PORT": str(collector_port),
        "FLOW_API_PORT": str(api_port),
        "FLOW_JIRA_WEBHOOK_SECRET": JIRA_SECRET,
        "FLOW_GITHUB_WEBHOOK_SECRET": GITHUB_SECRET,
        "FLOW_INGEST_TOKEN": INGEST_TOKEN,
        "FLOW_LOG_LEVEL": "DEBUG",
        "FLOW_LOG_JSON": "1",
    }  # fmt: skip
    for name in ("FLOW_API_AUTH", "FLOW_ALLOW_UNSIGNED", "FLOW_API_DATABASE_URL"):
        env.pop(name, None)
    out_path, err_path = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "infra.cli", "up", cwd=REPO, env=env, stdout=out, stderr=err
        )
    collector = httpx.AsyncClient(base_url=f"http://127.0.0.1:{collector_port}", timeout=15)
    api = httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=15)
    signatures: list[str] = []
    try:

        async def up() -> bool:
            assert process.returncode is None, err_path.read_text()[-3000:]
            return (await collector.get("/health")).status_code == 200 and (
                await api.get("/ready")
            ).status_code == 200

        await wait_for(up, timeout=60, what="flowmetrics up to answer")

        jira = (fixtures_dir() / "jira/issue_created/cloud_TES-41_created.json").read_bytes()
        pr = (fixtures_dir() / "github/pull_request/opened.json").read_bytes()
        for secret, body, route, headers, expect in (
            (JIRA_SECRET, jira, "/webhooks/jira", {"x-atlassian-webhook-identifier": "j1"}, 202),
            (JIRA_SECRET + "!", jira, "/webhooks/jira", {}, 401),
            (GITHUB_SECRET, pr, "/webhooks/github",
             {"x-github-event": "pull_request", "x-github-delivery": "g1"}, 202),
            (GITHUB_SECRET + "!", pr, "/webhooks/github",
             {"x-github-event": "pull_request", "x-github-delivery": "g2"}, 401),
            (GITHUB_SECRET, b"{not json", "/webhooks/github",
             {"x-github-event": "pull_request", "x-github-delivery": "g3"}, 400),
        ):  # fmt: skip
            signature = sign(secret, body)
            signatures.append(signature)
            name = "x-hub-signature" if route.endswith("jira") else "x-hub-signature-256"
            response = await collector.post(
                route, content=body,
                headers={**headers, name: signature, "authorization": f"Bearer {INGEST_TOKEN}"},
            )  # fmt: skip
            assert response.status_code == expect, response.text

        for token, expect in ((INGEST_TOKEN, 422), (INGEST_TOKEN + "x", 401)):
            response = await collector.post(
                "/api/v1/events", content=b"[{}]", headers={"authorization": f"Bearer {token}"}
            )
            assert response.status_code == expect
        for token, expect in ((key.token, 200), (revoked.token, 401), (unknown.token, 401),
                              (JIRA_SECRET, 401)):  # fmt: skip
            response = await api.get("/api/v1/work-items",
                                     headers={"authorization": f"Bearer {token}"})  # fmt: skip
            assert response.status_code == expect, response.text
        await wait_for_group_caught_up(
            kafka_bootstrap, f"g-{topics.prefix}", topics.events, timeout=30
        )
    finally:
        await collector.aclose()
        await api.aclose()
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=30)
            except TimeoutError:
                process.kill()
                await process.wait()

    output = out_path.read_text(errors="replace") + err_path.read_text(errors="replace")
    assert '"delivery_accepted"' in output and '"api_key_rejected"' in output, output[-3000:]
    forbidden = {
        "jira secret": JIRA_SECRET,
        "github secret": GITHUB_SECRET,
        "ingest token": INGEST_TOKEN,
        "api key": key.token.split("_", 2)[2],
        "revoked api key": revoked.token.split("_", 2)[2],
        "unknown api key": unknown.token.split("_", 2)[2],
        **{f"signature {i}": s.removeprefix("sha256=") for i, s in enumerate(signatures)},
    }
    print(f"\n{len(output.splitlines())} log lines searched")
    leaked = {what: value for what, value in forbidden.items() if value in output}
    assert not leaked, leaked
