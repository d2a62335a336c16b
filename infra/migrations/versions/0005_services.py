"""Services: catalog and dependency edges.

Revision ID: 0005_services
Revises: 0004_backfill

Derived by :mod:`processor.services_store` (``docs/services.md``):

- ``services``: the catalog, one row per declared service (latest declaration).
- ``service_edges``: one row per client → server pair of the OpenTelemetry
  service graph, with first/last seen; ``stale`` when not seen for the
  configured time before the graph's latest observation (never deleted).
- ``incidents.service_path``: the services an attributed incident went through,
  from its own service to the deployment's.
"""

from alembic import op

revision = "0005_services"
down_revision = "0004_backfill"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        create table services (
            service       text primary key,
            team          text not null default '',
            repos         text[] not null default '{}',
            jira_projects text[] not null default '{}',
            description   text not null default '',
            source        text not null,
            declared_at   timestamptz not null
        )
        """
    )
    op.execute(
        """
        create table service_edges (
            client          text not null,
            server          text not null,
            connection_type text not null default '',
            asynchronous    boolean not null,
            first_seen      timestamptz not null,
            last_seen       timestamptz not null,
            stale           boolean not null,
            primary key (client, server)
        )
        """
    )
    op.execute("create index service_edges_server_idx on service_edges (server)")
    op.execute("alter table incidents add column service_path text[]")


def downgrade() -> None:
    op.execute("alter table incidents drop column if exists service_path")
    op.execute("drop table if exists service_edges")
    op.execute("drop table if exists services")
