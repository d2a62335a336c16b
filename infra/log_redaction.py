"""Keeps secrets, signatures and credentials out of log lines.

Three nets, in order, applied to every structlog event (``RedactSecrets``) and
to every formatted stdlib record (``RedactingFormatter``):

1. by key — a value under a key that names a credential (``authorization``,
   ``x-hub-signature-256``, ``*secret*``, ``*token*``, ``password``, ``cookie``,
   ``api_key`` ...) is replaced whole, whatever its type, at any depth;
2. by value — the configured secrets (webhook secrets, ingest token, database
   passwords) wherever they occur verbatim in a string;
3. by shape — ``sha256=<hex>`` signatures, ``Bearer <token>``, our API keys
   (``fmk_<id>_<secret>``: the public id is kept) and ``user:password@`` in URLs.

Any other object is logged as its redacted ``repr`` (what the renderers would
print). The rendered line goes through nets 2 and 3 once more, as a last net.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

from structlog.typing import EventDict, WrappedLogger

REDACTED = "[redacted]"

_SENSITIVE_KEY = re.compile(
    r"authori[sz]ation|cookie|secret|token|passw(or)?d|signature|api[_-]?key|credential",
    re.IGNORECASE,
)
_SHAPES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(sha(?:1|256)=)[0-9a-fA-F]{8,}"), rf"\1{REDACTED}"),
    (re.compile(r"(\b[Bb]earer\s+)(?!fmk_[0-9a-f]{8}_)[^\s\"',;]+"), rf"\1{REDACTED}"),
    (re.compile(r"(fmk_[0-9a-f]{8}_)[A-Za-z0-9_-]+"), rf"\1{REDACTED}"),
    (re.compile(r"(://[^/\s:@]+:)[^@\s/]+(@)"), rf"\1{REDACTED}\2"),
)
# Shorter configured secrets would redact ordinary words; none of ours is that short.
MIN_SECRET_LENGTH = 8


def sensitive_key(key: object) -> bool:
    return isinstance(key, str) and _SENSITIVE_KEY.search(key) is not None


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        self.secrets = sorted(
            {s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True
        )

    def text(self, value: str) -> str:
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        for pattern, replacement in _SHAPES:
            value = pattern.sub(replacement, value)
        return value

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, bytes | bytearray):
            return self.text(bytes(value).decode("utf-8", errors="replace"))
        if isinstance(value, Mapping):
            return {
                (self.text(k) if isinstance(k, str) else k): (
                    REDACTED if sensitive_key(k) else self.value(v)
                )
                for k, v in value.items()
            }
        if isinstance(value, list | tuple | set | frozenset):
            return [self.value(v) for v in value]
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int | float):
            # Printed as its repr; a secret inside those digits would otherwise be cut
            # out of the rendered line by the last net, leaving it invalid JSON.
            shown = repr(value)
            return value if self.text(shown) == shown else REDACTED
        # What a renderer would print for any other object is its repr.
        return self.text(repr(value))


class RedactSecrets:
    """structlog processor (place it after ``format_exc_info``, before the renderer)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.redactor = Redactor(secrets)

    def __call__(self, logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
        redacted: EventDict = self.redactor.value(event)
        return redacted


class RedactRendered:
    """Wraps a renderer: the finished line is scrubbed once more (reprs, keys)."""

    def __init__(self, renderer: Any, secrets: Iterable[str] = ()) -> None:
        self.renderer = renderer
        self.redactor = Redactor(secrets)

    def __call__(self, logger: WrappedLogger, method: str, event: EventDict) -> Any:
        rendered = self.renderer(logger, method, event)
        if isinstance(rendered, bytes):
            return self.redactor.text(rendered.decode("utf-8", errors="replace")).encode()
        return self.redactor.text(rendered) if isinstance(rendered, str) else rendered


class RedactingFormatter(logging.Formatter):
    """For stdlib loggers (uvicorn, aiokafka, psycopg): the formatted record, traceback
    included, is scrubbed."""

    def __init__(self, fmt: str | None = None, secrets: Iterable[str] = ()) -> None:
        super().__init__(fmt)
        self.redactor = Redactor(secrets)

    def format(self, record: logging.LogRecord) -> str:
        return self.redactor.text(super().format(record))
