"""Backfill: cursors per source and scope.

Revision ID: 0004_backfill
Revises: 0003_analytics
"""

from alembic import op

revision = "0004_backfill"
down_revision = "0003_analytics"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One row per (source, scope), e.g. ('jira', 'project:FLOW') or
    # ('github', 'octo/app:pulls'). covered_from..watermark is what has been
    # published; run is the pass in progress (its reader position), so a killed
    # backfill resumes there. See collectors/backfill/cursors.py.
    op.execute(
        """
        create table backfill_cursors (
            source           text not null,
            scope            text not null,
            covered_from     timestamptz,
            watermark        timestamptz,
            run              jsonb,
            items_total      bigint not null default 0,
            last_started_at  timestamptz,
            last_finished_at timestamptz,
            last_error       text,
            updated_at       timestamptz not null default now(),
            primary key (source, scope),
            check (watermark is null or covered_from is null or covered_from <= watermark)
        )
        """
    )


def downgrade() -> None:
    op.execute("drop table if exists backfill_cursors")
