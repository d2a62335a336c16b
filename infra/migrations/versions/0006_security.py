"""Security: API keys (hashed) and the read-only API role.

Revision ID: 0006_security
Revises: 0005_services

- ``api_keys``: one row per key; only ``sha256(token)`` is kept (``api/auth.py``
  says why a fast hash is right for 256-bit random tokens). Revoking sets
  ``revoked_at``; rows are never deleted, so ``api-key list`` keeps the history.
- ``flowmetrics_api``: the role the API connects as (``FLOW_API_DATABASE_URL``).
  It may read every table and view of ``public`` — those of later revisions too,
  through default privileges — and write nothing: no INSERT/UPDATE/DELETE grant
  anywhere, and ``default_transaction_read_only`` on the role as well as on the
  API's pool. Roles are cluster-wide and the test suite creates many databases
  on one server, so the role is created once, idempotently (also against a
  concurrent migration of another database), and granted per database. A
  migrating user without CREATEROLE gets a warning, not a failure: an
  administrator then creates the role and runs the grants (``docs/security.md``).
"""

from alembic import op

revision = "0006_security"
down_revision = "0005_services"
branch_labels = None
depends_on = None

API_ROLE = "flowmetrics_api"

GRANTS = f"""
    execute 'grant connect on database ' || quote_ident(current_database())
            || ' to {API_ROLE}';
    grant usage on schema public to {API_ROLE};
    grant select on all tables in schema public to {API_ROLE};
    alter default privileges in schema public grant select on tables to {API_ROLE};
"""


def upgrade() -> None:
    op.execute(
        """
        create table api_keys (
            key_id     text primary key,
            name       text not null,
            key_hash   text not null unique,
            created_at timestamptz not null default now(),
            revoked_at timestamptz
        )
        """
    )
    op.execute(
        f"""
        do $$
        begin
          begin
            create role {API_ROLE} login;
            alter role {API_ROLE} set default_transaction_read_only = on;
            alter role {API_ROLE} set statement_timeout = '30s';
          exception
            -- Cluster-wide: another database (or a concurrent migration) made it first.
            when duplicate_object or unique_violation then null;
            when insufficient_privilege then
              raise warning 'cannot create role {API_ROLE}: create it, then grant it '
                            '(docs/security.md)';
          end;
          if exists (select 1 from pg_roles where rolname = '{API_ROLE}') then
            {GRANTS}
          end if;
        end $$
        """
    )


def downgrade() -> None:
    # Only this database's grants go: the role is cluster-wide and other
    # databases may still use it (docs/security.md says how to drop it).
    op.execute(
        f"""
        do $$ begin
          if exists (select 1 from pg_roles where rolname = '{API_ROLE}') then
            alter default privileges in schema public revoke select on tables from {API_ROLE};
            revoke select on all tables in schema public from {API_ROLE};
            revoke usage on schema public from {API_ROLE};
            execute 'revoke connect on database ' || quote_ident(current_database())
                    || ' from {API_ROLE}';
          end if;
        end $$
        """
    )
    op.execute("drop table api_keys")
