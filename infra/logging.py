"""Structured logs: one JSON object per line on stderr (console rendering for humans).

Every line, structlog's and the stdlib's, passes through ``infra.log_redaction``:
no secret, signature or credential is ever written.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

import structlog

from infra.log_redaction import RedactingFormatter, RedactRendered, RedactSecrets


def configure_logging(
    level: str = "INFO", *, json: bool = True, secrets: Iterable[str] = ()
) -> None:
    """``secrets``: values to scrub verbatim wherever they appear (``Settings.secret_values``)."""
    secrets = list(secrets)
    renderer: structlog.types.Processor = RedactRendered(
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(),
        secrets,
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            RedactSecrets(secrets),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format="%(message)s")
    for handler in logging.getLogger().handlers:
        fmt = handler.formatter._fmt if handler.formatter is not None else "%(message)s"
        handler.setFormatter(RedactingFormatter(fmt, secrets))
    for noisy in ("aiokafka", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
