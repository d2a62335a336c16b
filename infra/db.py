"""PostgreSQL plumbing: connection pools and the migration runner.

psycopg errors are translated here into :class:`DatabaseUnavailable` where the
caller's right answer is "retry later" rather than "this is a bug".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
from alembic import command
from alembic.config import Config
from psycopg_pool import AsyncConnectionPool

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class DatabaseError(Exception):
    """Base of this module's errors."""


class DatabaseUnavailable(DatabaseError):
    """The server cannot be reached or dropped the connection; retry with backoff."""


def sqlalchemy_url(dsn: str) -> str:
    """Alembic speaks SQLAlchemy URLs; point it at the psycopg 3 driver."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+psycopg://" + dsn[len(prefix) :]
    raise DatabaseError(f"not a PostgreSQL URL: {dsn.split('@')[-1]!r}")


def libpq_dsn(dsn: str) -> str:
    return dsn.replace("postgresql+psycopg://", "postgresql://", 1)


def alembic_config(dsn: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(dsn).replace("%", "%%"))
    return cfg


def migrate(dsn: str, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (idempotent; safe to run on every start)."""
    command.upgrade(alembic_config(dsn), revision)


def timescaledb_enabled(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("select 1 from pg_extension where extname = 'timescaledb'").fetchone()
    return row is not None


def make_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 8, **kwargs: Any
) -> AsyncConnectionPool:
    return AsyncConnectionPool(
        libpq_dsn(dsn), min_size=min_size, max_size=max_size, open=False, **kwargs
    )
