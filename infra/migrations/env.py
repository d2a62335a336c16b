"""Alembic environment: online migrations only, one transaction per revision.

Every service may run migrations at start (Kubernetes has no one-shot
"migrate first"), so a session-level advisory lock serialises concurrent runs:
the second waits, then finds nothing left to do.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool, text

MIGRATION_LOCK_KEY = 0x666C6F77  # "flow"

config = context.config
url = config.get_main_option("sqlalchemy.url")
assert url, "sqlalchemy.url is set by infra.db.alembic_config"

engine = create_engine(url, poolclass=pool.NullPool)
with engine.connect() as connection:
    connection.execute(text("select pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
    connection.commit()
    try:
        context.configure(connection=connection, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
    finally:
        connection.execute(text("select pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
        connection.commit()
engine.dispose()
