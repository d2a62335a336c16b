"""Backfill: cursors per source and scope.

Revision ID: 0004_backfill
Revises: 0003_analytics
"""

from alembic import op  # noqa: F401 - used once this revision has content

revision = "0004_backfill"
down_revision = "0003_analytics"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # filled in by the feature that owns this revision


def downgrade() -> None:
    pass
