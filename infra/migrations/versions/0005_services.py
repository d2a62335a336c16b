"""Services: catalog and dependency edges.

Revision ID: 0005_services
Revises: 0004_backfill
"""

from alembic import op  # noqa: F401 - used once this revision has content

revision = "0005_services"
down_revision = "0004_backfill"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # filled in by the feature that owns this revision


def downgrade() -> None:
    pass
