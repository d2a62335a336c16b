"""DORA: commits, pushes, pull requests, deployments, incidents.

Revision ID: 0002_dora
Revises: 0001_core

Derived by :mod:`processor.dora_store` (definitions in ``docs/dora.md``):

- ``deployments``: every deployment, any environment, with its outcome. A plain
  table: its ``finished_at`` is null while it runs, and a hypertable's time
  column cannot be; it is also small (one row per deployment).
- ``production_deployments``: the finished production deployments, the fact
  table of deployment frequency and change failure rate. A hypertable on
  ``finished_at``; its key includes the time column, as TimescaleDB requires
  (a deployment has one ``finished_at``, so the key is still one row per
  deployment).
- ``deployment_changes``: each commit with the deployment that shipped it first
  and its lead time. A hypertable on ``deployed_at``.
- ``incidents``: one row per incident with its attribution. A plain table:
  incidents are few and ``incident_id`` alone is their natural key.
- ``daily_deployments``: finished production deployments per UTC day and
  service (a continuous aggregate under TimescaleDB, a view otherwise).
"""

from alembic import op

from infra.migrations.timescale import (
    continuous_aggregate,
    drop_continuous_aggregate,
    hypertable,
)

revision = "0002_dora"
down_revision = "0001_core"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        create table deployments (
            deployment_id  text primary key,
            service        text not null,
            repo           text not null,
            team           text not null,
            environment    text not null,
            is_production  boolean not null,
            sha            text not null,
            status         text not null,
            succeeded      boolean not null,
            started_at     timestamptz not null,
            finished_at    timestamptz,
            url            text,
            rollback_of    text,
            rolled_back_by text,
            failed         boolean not null,
            failure_reason text,
            updated_at     timestamptz not null
        )
        """
    )
    op.execute("create index deployments_service_idx on deployments (service, finished_at)")
    op.execute("create index deployments_repo_idx on deployments (repo)")

    op.execute(
        """
        create table production_deployments (
            deployment_id  text not null,
            finished_at    timestamptz not null,
            service        text not null,
            repo           text not null,
            team           text not null,
            environment    text not null,
            succeeded      boolean not null,
            failed         boolean not null,
            failure_reason text,
            primary key (deployment_id, finished_at)
        )
        """
    )
    op.execute(
        "create index production_deployments_service_idx "
        "on production_deployments (service, finished_at)"
    )
    op.execute(
        "create index production_deployments_team_idx on production_deployments (team, finished_at)"
    )
    hypertable("production_deployments", "finished_at", chunk="90 days")

    op.execute(
        """
        create table deployment_changes (
            service       text not null,
            repo          text not null,
            team          text not null,
            sha           text not null,
            deployment_id text not null,
            deployed_at   timestamptz not null,
            committed_at  timestamptz not null,
            lead_time_s   double precision,
            pull_request  text,
            kind          text not null,
            primary key (service, repo, sha, deployed_at)
        )
        """
    )
    op.execute(
        "create index deployment_changes_deployment_idx on deployment_changes (deployment_id)"
    )
    op.execute("create index deployment_changes_time_idx on deployment_changes (deployed_at)")
    hypertable("deployment_changes", "deployed_at", chunk="90 days")

    op.execute(
        """
        create table incidents (
            incident_id       text primary key,
            service           text not null,
            repo              text,
            team              text not null,
            title             text not null default '',
            opened_at         timestamptz not null,
            resolved_at       timestamptz,
            time_to_restore_s double precision,
            root_cause_sha    text,
            deployment_url    text,
            deployment_id     text,
            attribution       text,
            updated_at        timestamptz not null
        )
        """
    )
    op.execute("create index incidents_service_idx on incidents (service, opened_at)")
    op.execute("create index incidents_deployment_idx on incidents (deployment_id)")

    continuous_aggregate(
        "daily_deployments",
        "finished_at",
        """
        select {day} as day, service, repo, team, environment,
               count(*) as finished,
               sum(case when succeeded then 1 else 0 end) as successful,
               sum(case when failed then 1 else 0 end) as failed
        from production_deployments
        group by 1, 2, 3, 4, 5
        """,
    )


def downgrade() -> None:
    drop_continuous_aggregate("daily_deployments")
    for table in ("incidents", "deployment_changes", "production_deployments", "deployments"):
        op.execute(f"drop table if exists {table}")
