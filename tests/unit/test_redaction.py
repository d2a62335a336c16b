"""No secret, signature or credential survives the logging pipeline."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from api.auth import issue_key
from collectors.signatures import sign
from infra.log_redaction import (
    REDACTED,
    RedactingFormatter,
    Redactor,
    RedactRendered,
    RedactSecrets,
)

SECRET_CHARS = st.characters(min_codepoint=33, max_codepoint=126)
secrets_ = st.text(SECRET_CHARS, min_size=12, max_size=40).filter(lambda s: REDACTED not in s)
# Anything a log call may carry: nested dicts/lists of text, numbers, bytes.
words = st.text(max_size=30)
leaves = st.one_of(words, st.integers(), st.none(), st.booleans(), st.binary(max_size=20))


def _values(leaf: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(words, inner, max_size=4)
        ),
        max_leaves=12,
    )


def render(event: dict[str, Any], known: list[str]) -> str:
    """The production chain's tail: redact, render JSON, redact the line."""
    processors = [RedactSecrets(known), RedactRendered(structlog.processors.JSONRenderer(), known)]
    out: Any = dict(event)
    for processor in processors:
        out = processor(None, "info", out)
    assert isinstance(out, str)
    return out


def _strings(value: Any) -> list[str]:
    """Every key and string value of decoded JSON (escapes undone)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [*value.keys(), *(t for v in value.values() for t in _strings(v))]
    if isinstance(value, list):
        return [t for v in value for t in _strings(v)]
    return []


@settings(max_examples=300)
@given(
    secret=secrets_,
    before=words,
    after=words,
    context=st.dictionaries(words, _values(leaves), max_size=4),
    where=st.sampled_from(["message", "nested", "list", "bytes", "repr"]),
)
def test_a_known_secret_never_appears_in_the_line(
    secret: str, before: str, after: str, context: dict[str, Any], where: str
) -> None:
    """Wherever a configured secret is embedded, the rendered line does not contain it."""

    class Opaque:
        def __repr__(self) -> str:
            return f"Opaque({before}{secret}{after})"

    embedded = f"{before}{secret}{after}"
    event: dict[str, Any] = {"event": "x", **context}
    if where == "message":
        event["event"] = embedded
    elif where == "nested":
        event["ctx"] = {"a": [{"b": embedded}]}
    elif where == "list":
        event["items"] = ("ok", embedded)
    elif where == "bytes":
        event["body"] = embedded.encode()
    else:
        event["obj"] = Opaque()
    line = render(event, [secret])
    assert secret not in line
    assert not any(secret in text for text in _strings(json.loads(line)))


@settings(max_examples=200)
@given(body=st.binary(max_size=200), secret=secrets_, key=words, noise=words)
def test_signatures_and_bearer_tokens_are_redacted_by_shape(
    body: bytes, secret: str, key: str, noise: str
) -> None:
    """Signatures and tokens of secrets the logger was never told about are still removed."""
    signature = sign(secret, body)
    token = issue_key("k").token
    event = {
        "event": f"{noise} got {signature} with Authorization: Bearer {token}",
        key or "k": signature,
        "headers": [("x-hub-signature-256", signature)],
    }
    line = render(event, [])
    assert signature.removeprefix("sha256=") not in line
    assert token.split("_", 2)[2] not in line
    assert token[: len("fmk_") + 8] in line  # the public key id stays, to say which key


def test_values_under_credential_keys_are_replaced_whole() -> None:
    """Headers and settings logged as mappings lose their credentials, not their shape."""
    redactor = Redactor()
    out = redactor.value(
        {
            "headers": {
                "Authorization": "Basic dXNlcjpwYXNz",
                "X-Hub-Signature": "sha1=abc",
                "Cookie": "session=1",
                "content-type": "application/json",
            },
            "jira_webhook_secret": 12345678,
            "ingest_token": None,
            "delivery_id": "d-1",
            "dsn": "postgresql://flow:hunter2secret@db:5432/flow",
        }
    )
    assert out["headers"] == {
        "Authorization": REDACTED,
        "X-Hub-Signature": REDACTED,
        "Cookie": REDACTED,
        "content-type": "application/json",
    }
    assert out["jira_webhook_secret"] == REDACTED and out["ingest_token"] == REDACTED
    assert out["delivery_id"] == "d-1"
    assert out["dsn"] == f"postgresql://flow:{REDACTED}@db:5432/flow"


def test_stdlib_records_and_their_tracebacks_are_redacted() -> None:
    """uvicorn/aiokafka lines, exception text included, go through the same nets."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter("%(levelname)s %(message)s", ["topsecret-value"]))
    logger = logging.getLogger("test_redaction.stdlib")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise ValueError("bad header sha256=" + "ab" * 32 + " topsecret-value")
        except ValueError:
            logger.exception("failed with %s", "Bearer fmk_0123abcd_" + "x" * 43)
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "topsecret-value" not in text and "ab" * 32 not in text and "x" * 43 not in text
    assert "ValueError" in text and "fmk_0123abcd_" in text


def test_configure_logging_wires_the_redaction(capsys: Any) -> None:
    """The configured chain (as the CLI builds it) redacts; nothing else is lost."""
    from infra.logging import configure_logging

    saved = structlog.get_config()
    root = logging.getLogger()
    formatters = [(h, h.formatter) for h in root.handlers]
    try:
        configure_logging("INFO", json=True, secrets=["s3cr3t-webhook-key"])
        structlog.configure(cache_logger_on_first_use=False)
        structlog.get_logger("t").info(
            "delivery",
            secret_hint="s3cr3t-webhook-key",
            note="key s3cr3t-webhook-key",
            delivery_id="d-9",
        )
        err = capsys.readouterr().err
    finally:
        structlog.configure(**saved)
        for handler, formatter in formatters:
            handler.setFormatter(formatter)
    line = json.loads(err.strip().splitlines()[-1])
    assert "s3cr3t-webhook-key" not in err
    assert line["delivery_id"] == "d-9" and line["note"] == f"key {REDACTED}"


def test_a_number_that_prints_a_secret_is_redacted_and_the_line_stays_json() -> None:
    """Found by the property above: a secret of digits inside a logged number."""
    line = render({"event": "x", "count": 50000000000000}, ["000000000000"])
    assert "000000000000" not in line
    assert json.loads(line)["count"] == REDACTED
    assert json.loads(render({"event": "x", "count": 5}, ["000000000000"]))["count"] == 5
