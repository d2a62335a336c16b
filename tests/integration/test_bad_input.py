"""Bad input, against the running services.

- schemathesis against the API's and the collectors' OpenAPI documents: no 5xx,
  every status code, content type, header and body as documented (and, for the
  API, every /api/v1 route refusing a request without its key);
- hypothesis-generated garbage, truncated, oversized, wrongly-signed and
  replayed webhooks: each gets its 4xx (a replay its 200/202), and the database
  is left exactly as it was.

The HTTP clients run in a worker thread (or a schemathesis subprocess) while
the services run on the test's event loop.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collectors.signatures import sign
from schemas.topics import Topics
from tests.fixtures import fixtures_dir
from tests.integration.security_support import (
    api_role_dsn,
    end_offsets,
    new_api_key,
    settle_fully,
    snapshot,
)
from tests.pipeline import GITHUB_SECRET, INGEST_TOKEN, JIRA_SECRET, Pipeline, running_pipeline

pytestmark = [
    pytest.mark.integration,
    # The services run on the event loop while hypothesis draws in a worker thread;
    # their own use of `random` (client jitter) is not the strategies'.
    pytest.mark.filterwarnings("ignore:Do not use the .random. module"),
]

MAX_EXAMPLES = int(os.environ.get("FLOW_BAD_INPUT_EXAMPLES", "60"))
SCHEMATHESIS_EXAMPLES = int(os.environ.get("FLOW_SCHEMATHESIS_EXAMPLES", "30"))
BODY_LIMIT = 64 * 1024

JIRA_FIXTURES = [
    "jira/issue_created/cloud_TES-41_created.json",
    "jira/issue_updated/cloud_TES-41_status_todo_to_inprogress.json",
    "jira/issue_updated/server_TES-4_status_inprogress_to_resolved.json",
    "jira/issue_deleted/cloud_IDT-19_deleted.json",
]
GITHUB_EVENTS = [
    "pull_request",
    "pull_request_review",
    "push",
    "deployment",
    "deployment_status",
    "workflow_run",
    "issues",
    "create",
]
GITHUB_FIXTURES = [
    ("pull_request", "github/pull_request/opened.json"),
    ("pull_request", "github/pull_request/closed_merged.json"),
    ("deployment_status", "github/deployment_status/created_success.json"),
]

# Checks that say "no 5xx and the responses are what the document says".
# positive/negative_data_acceptance are left out: they judge the *request*
# validation (start >= end is refused though the schema allows it; pydantic
# takes an epoch number for a date-time), not the answers.
CONFORMANCE = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "missing_required_header",
    "unsupported_method",
]


async def run_schemathesis(base_url: str, workdir: Path, checks: list[str], *extra: str) -> str:
    """``schemathesis run`` on the service's /openapi.json; fails the test on any failure."""
    binary = Path(sys.executable).with_name("schemathesis")
    command = [
        str(binary), "run", f"{base_url}/openapi.json",
        "--checks", ",".join(checks),
        "--max-examples", str(SCHEMATHESIS_EXAMPLES),
        "--seed", "20261122",
        "--request-timeout", "20",
        "--phases", "examples,coverage,fuzzing",
        *extra,
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=workdir,
        env={**os.environ, "NO_COLOR": "1"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=240)
    text = out.decode(errors="replace")
    assert process.returncode == 0, text[-12_000:]
    return text


async def seed(p: Pipeline) -> None:
    for i, path in enumerate(JIRA_FIXTURES):
        response = await p.post_jira((fixtures_dir() / path).read_bytes(), delivery_id=f"seed-{i}")
        assert response.status_code == 202, response.text
    for i, (event, path) in enumerate(GITHUB_FIXTURES):
        body = (fixtures_dir() / path).read_bytes()
        response = await p.post_github(event, body, delivery_id=f"seed-gh-{i}")
        assert response.status_code == 202, response.text
    await settle_fully(p)


async def test_api_answers_as_its_openapi_says(
    db_dsn: str, kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    """schemathesis on every API operation, with a key, as the read-only role: no 5xx,
    conforming answers, no route that ignores a missing key, nothing written."""
    key = new_api_key(db_dsn, "schemathesis")
    async with running_pipeline(
        db_dsn, kafka_bootstrap, topics,
        api_auth=True, api_rate_limit=10_000, api_rate_burst=10_000,
        api_database_url=api_role_dsn(db_dsn),
    ) as p:  # fmt: skip
        await seed(p)
        before = snapshot(db_dsn)
        base = str(p.api.base_url).rstrip("/")
        await run_schemathesis(
            base, tmp_path, [*CONFORMANCE, "ignored_auth"],
            "--header", f"Authorization: Bearer {key.token}",
        )  # fmt: skip
        assert snapshot(db_dsn) == before


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
async def test_collectors_answer_as_their_openapi_says(
    db_dsn: str, kafka_bootstrap: str, topics: Topics, tmp_path: Path, signed: bool
) -> None:
    """schemathesis on every collector operation: no 5xx and documented answers — with
    secrets (mostly 401s) and without (so generated bodies reach the parsers)."""
    secrets: dict[str, Any] = {} if signed else {
        "jira_webhook_secret": None, "github_webhook_secret": None, "ingest_token": None,
    }  # fmt: skip
    async with running_pipeline(db_dsn, kafka_bootstrap, topics, **secrets) as p:
        base = str(p.collector.base_url).rstrip("/")
        await run_schemathesis(
            base, tmp_path, CONFORMANCE, "--header", f"Authorization: Bearer {INGEST_TOKEN}"
        )


# --- hypothesis-generated webhooks ------------------------------------------------

not_json = st.binary(max_size=2048).filter(lambda b: not _is_json(b))
int64 = st.integers(-(2**63), 2**63 - 1)  # what orjson (and any JSON sender) writes
json_not_object = st.recursive(
    st.none() | st.booleans() | int64 | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=10,
).map(orjson.dumps)
json_objects = st.dictionaries(
    st.text(max_size=12),
    st.recursive(
        st.none() | int64 | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
        ),
        max_leaves=8,
    ),
    max_size=6,
).map(orjson.dumps)
delivery_ids = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=60)


def _is_json(body: bytes) -> bool:
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return True


def wrong_signatures(secret: str) -> st.SearchStrategy[Callable[[bytes], str | None]]:
    """Ways a signature header can be wrong for a body (or absent: None)."""
    return st.sampled_from([
        lambda body: None,
        lambda body: "",
        lambda body: sign(secret + "x", body),                 # another secret
        lambda body: sign(secret, body + b" "),                # another body
        lambda body: sign(secret, body).upper(),               # not the sender's format
        lambda body: sign(secret, body)[:-1],                  # cut short
        lambda body: "sha1=" + sign(secret, body)[7:47],       # another algorithm
        lambda body: sign(secret, body).replace("sha256=", ""),
    ])  # fmt: skip


class Prober:
    """Sends bad deliveries from a worker thread and tallies what came back."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=20)
        self.tally: Counter[tuple[str, int]] = Counter()

    def post(self, kind: str, path: str, body: Any, headers: dict[str, str],
             expect: set[int]) -> httpx.Response:  # fmt: skip
        response = self.http.post(path, content=body, headers=headers)
        self.tally[(kind, response.status_code)] += 1
        assert response.status_code in expect, (kind, response.status_code, response.text)
        if response.status_code >= 400:
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["status"] == response.status_code
        return response

    def jira(self, kind: str, body: Any, signature: str | None, expect: set[int],
             delivery: str | None = "bad", **headers: str) -> httpx.Response:  # fmt: skip
        h = {"content-type": "application/json", **headers}
        if signature is not None:
            h["x-hub-signature"] = signature
        if delivery is not None:
            h["x-atlassian-webhook-identifier"] = delivery
        return self.post(kind, "/webhooks/jira", body, h, expect)

    def github(self, kind: str, body: Any, signature: str | None, expect: set[int],
               event: str = "pull_request", delivery: str = "bad") -> httpx.Response:  # fmt: skip
        h = {"content-type": "application/json", "x-github-event": event,
             "x-github-delivery": delivery}  # fmt: skip
        if signature is not None:
            h["x-hub-signature-256"] = signature
        return self.post(kind, "/webhooks/github", body, h, expect)


def probe_bad_deliveries(base_url: str) -> Counter[tuple[str, int]]:
    """Every bad delivery must be refused; none may publish anything."""
    p = Prober(base_url)
    fixtures = [(fixtures_dir() / f).read_bytes() for f in JIRA_FIXTURES]
    gh_fixtures = [(fixtures_dir() / f).read_bytes() for _, f in GITHUB_FIXTURES]
    common = settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )

    @common
    @given(
        body=st.one_of(not_json, json_objects, st.sampled_from(fixtures)),
        wrong=wrong_signatures(JIRA_SECRET),
        gh_wrong=wrong_signatures(GITHUB_SECRET),
    )
    def wrongly_signed(body: bytes, wrong: Any, gh_wrong: Any) -> None:
        p.jira("wrongly signed", body, wrong(body), {401})
        p.github("wrongly signed", body, gh_wrong(body), {401})

    @common
    @given(body=not_json)
    def signed_garbage(body: bytes) -> None:
        p.jira("garbage (signed, not JSON)", body, sign(JIRA_SECRET, body), {400})
        p.github("garbage (signed, not JSON)", body, sign(GITHUB_SECRET, body), {400})

    @common
    @given(body=json_not_object)
    def signed_non_objects(body: bytes) -> None:
        p.jira("JSON, not an object (signed)", body, sign(JIRA_SECRET, body), {422})
        p.github("JSON, not an object (signed)", body, sign(GITHUB_SECRET, body), {422})

    @common
    @given(body=st.sampled_from(fixtures + gh_fixtures), data=st.data())
    def truncated(body: bytes, data: st.DataObject) -> None:
        cut = body[: data.draw(st.integers(1, len(body.rstrip()) - 1), label="cut at")]
        # Signed as cut (an honest sender, broken body) → 400; signed whole → 401.
        p.jira("truncated (signed as cut)", cut, sign(JIRA_SECRET, cut), {400})
        p.jira("truncated (signed whole)", cut, sign(JIRA_SECRET, body), {401})
        p.github("truncated (signed as cut)", cut, sign(GITHUB_SECRET, cut), {400})

    @settings(common, max_examples=max(10, MAX_EXAMPLES // 4))
    @given(
        extra=st.integers(1, 3 * BODY_LIMIT),
        filler=st.binary(min_size=1, max_size=64),
        chunked=st.booleans(),
        signed=st.booleans(),
    )
    def oversized(extra: int, filler: bytes, chunked: bool, signed: bool) -> None:
        body = (filler * (BODY_LIMIT // len(filler) + 2))[: BODY_LIMIT + extra]
        content: Any = iter([body[i:i + 8192] for i in range(0, len(body), 8192)]) if chunked \
            else body  # fmt: skip
        kind = "oversized (chunked)" if chunked else "oversized"
        p.jira(kind, content, sign(JIRA_SECRET, body) if signed else None, {413})

    @common
    @given(body=st.one_of(not_json, json_not_object, json_objects), token=st.booleans())
    def ingest(body: bytes, token: bool) -> None:
        headers = {
            "content-type": "application/json",
            "authorization": f"Bearer {INGEST_TOKEN if token else INGEST_TOKEN + 'x'}",
        }
        if not token:
            expect = {401}
        elif not _is_json(body):
            expect = {400}
        else:  # an empty batch is a valid one, of nothing
            expect = {202} if orjson.loads(body) == [] else {422}
        p.post("canonical events: garbage / wrong token", "/api/v1/events", body, headers, expect)

    for prop in (wrongly_signed, signed_garbage, signed_non_objects, truncated, oversized, ingest):
        prop()
    # A batch over the event limit, and a sender announcing a huge body.
    many = orjson.dumps([{}] * 1001)
    p.post("canonical events: too many", "/api/v1/events", many,
           {"authorization": f"Bearer {INGEST_TOKEN}"}, {413})  # fmt: skip
    p.tally[("announced 10 MB body", announced_oversize(base_url))] += 1
    p.http.close()
    return p.tally


def announced_oversize(base_url: str) -> int:
    """Headers announcing 10 MB, no body sent: refused at once, from Content-Length."""
    host, port = httpx.URL(base_url).host, httpx.URL(base_url).port
    with socket.create_connection((host, port or 80), timeout=10) as s:
        s.sendall(b"POST /webhooks/jira HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                  b"content-length: 10000000\r\n\r\n")  # fmt: skip
        status = int(s.recv(4096).split(b" ", 2)[1])
    assert status == 413
    return status


def probe_authentic(base_url: str) -> Counter[tuple[str, int]]:
    """Authentic deliveries sent again: same id → 200 duplicate; any other id (the id is
    not covered by the signature) → accepted, but folded into the same event ids.
    Authentic nonsense: ignored or refused, and never an event."""
    p = Prober(base_url)
    jira = [(f"seed-{i}", (fixtures_dir() / f).read_bytes()) for i, f in enumerate(JIRA_FIXTURES)]
    github = [(f"seed-gh-{i}", event, (fixtures_dir() / f).read_bytes())
              for i, (event, f) in enumerate(GITHUB_FIXTURES)]  # fmt: skip

    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None)
    @given(
        i=st.integers(0, len(jira) - 1),
        j=st.integers(0, len(github) - 1),
        new_id=delivery_ids,
        same_id=st.booleans(),
    )
    def replayed(i: int, j: int, new_id: str, same_id: bool) -> None:
        jid, jbody = jira[i]
        gid, event, gbody = github[j]
        if same_id:
            p.jira("replay, same id", jbody, sign(JIRA_SECRET, jbody), {200}, delivery=jid)
            p.github("replay, same id", gbody, sign(GITHUB_SECRET, gbody), {200},
                     event=event, delivery=gid)  # fmt: skip
        else:
            p.jira("replay, new id", jbody, sign(JIRA_SECRET, jbody), {200, 202},
                   delivery=f"r-{new_id}")  # fmt: skip
            p.github("replay, new id", gbody, sign(GITHUB_SECRET, gbody), {200, 202},
                     event=event, delivery=f"r-{new_id}")  # fmt: skip
        # No identifier at all: the collector falls back to a hash of the body.
        p.jira("replay, no id", jbody, sign(JIRA_SECRET, jbody), {200, 202}, delivery=None)

    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None)
    @given(body=json_objects, event=st.sampled_from(GITHUB_EVENTS))
    def authentic_nonsense(body: bytes, event: str) -> None:
        n = uuid.uuid4()
        # Signed JSON objects that are no webhook we can map: ignored (202, the raw
        # delivery kept) or refused (422, dead-lettered) — never an event.
        for response in (
            p.jira("signed JSON object, unmappable", body, sign(JIRA_SECRET, body),
                   {202, 422}, delivery=f"n-{n}"),
            p.github("signed JSON object, unmappable", body, sign(GITHUB_SECRET, body),
                     {202, 422}, event=event, delivery=f"n-{n}"),
        ):  # fmt: skip
            if response.status_code == 202:
                assert response.json()["status"] == "ignored", response.text

    replayed()
    authentic_nonsense()
    p.http.close()
    return p.tally


async def test_bad_webhooks_get_their_4xx_and_change_nothing(
    db_dsn: str, kafka_bootstrap: str, topics: Topics
) -> None:
    """Garbage, truncated, oversized, wrongly-signed → 400/401/413/422, nothing published;
    replays and signed nonsense → 200/202/422, and not one row of the database differs."""
    async with running_pipeline(db_dsn, kafka_bootstrap, topics, max_body_bytes=BODY_LIMIT) as p:
        await seed(p)
        before, offsets = snapshot(db_dsn), await end_offsets(kafka_bootstrap, topics)
        base = str(p.collector.base_url).rstrip("/")

        bad = await asyncio.to_thread(probe_bad_deliveries, base)
        await settle_fully(p)
        assert await end_offsets(kafka_bootstrap, topics) == offsets, "a bad delivery published"
        assert snapshot(db_dsn) == before

        replays = await asyncio.to_thread(probe_authentic, base)
        await settle_fully(p)
        assert snapshot(db_dsn) == before
        assert (await p.collector.get("/health")).status_code == 200

    summary = sorted((bad + replays).items())
    print("\nbad inputs tried (kind, status): count")
    for (kind, status), count in summary:
        print(f"  {kind:<45} {status}: {count}")
    assert sum(bad.values()) > 6 * MAX_EXAMPLES


# --- mutated real deliveries ---------------------------------------------------

json_values = st.one_of(
    st.none(),
    st.booleans(),
    int64,
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.just([]),
    st.just({}),
    st.lists(st.text(max_size=5), max_size=3),
)


def mutate(data: st.DataObject, document: Any) -> Any:
    """One key deleted or one value replaced, somewhere in the document."""
    if not isinstance(document, dict | list) or not document:
        return data.draw(json_values, label="value")
    if isinstance(document, dict):
        key = data.draw(st.sampled_from(sorted(document)), label="key")
        if data.draw(st.integers(0, 3), label="action") == 0:
            return {k: v for k, v in document.items() if k != key}
        descend = data.draw(st.booleans(), label="descend")
        return {**document, key: mutate(data, document[key]) if descend
                else data.draw(json_values, label="value")}  # fmt: skip
    index = data.draw(st.integers(0, len(document) - 1), label="index")
    return [*document[:index], mutate(data, document[index]), *document[index + 1 :]]


def probe_mutations(base_url: str) -> Counter[tuple[str, int]]:
    """Real deliveries with one field deleted or retyped, correctly signed."""
    p = Prober(base_url)
    jira = [orjson.loads((fixtures_dir() / f).read_bytes()) for f in JIRA_FIXTURES]
    github = [(event, orjson.loads((fixtures_dir() / f).read_bytes()))
              for event, f in GITHUB_FIXTURES]  # fmt: skip

    @settings(max_examples=MAX_EXAMPLES * 3, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
    @given(i=st.integers(0, len(jira) - 1), j=st.integers(0, len(github) - 1), data=st.data())
    def mutated(i: int, j: int, data: st.DataObject) -> None:
        body = orjson.dumps(mutate(data, jira[i]))
        p.jira("mutated real delivery", body, sign(JIRA_SECRET, body), {202, 422},
               delivery=f"m-{uuid.uuid4()}")  # fmt: skip
        event, document = github[j]
        body = orjson.dumps(mutate(data, document))
        p.github("mutated real delivery", body, sign(GITHUB_SECRET, body), {202, 422},
                 event=event, delivery=f"m-{uuid.uuid4()}")  # fmt: skip

    mutated()
    p.http.close()
    return p.tally


async def test_mutated_real_deliveries_are_accepted_or_refused_never_a_5xx(
    db_dsn: str, kafka_bootstrap: str, topics: Topics
) -> None:
    """A signed real delivery with any one field deleted or of another type: 202 or 422
    (problem+json), never a 5xx; the processor keeps up with what was accepted."""
    async with running_pipeline(db_dsn, kafka_bootstrap, topics) as p:
        tally = await asyncio.to_thread(probe_mutations, str(p.collector.base_url).rstrip("/"))
        await settle_fully(p)
        assert (await p.collector.get("/health")).status_code == 200
    print("\nmutated deliveries (kind, status): count", dict(tally))
