"""Analytics: the analytics schema of stable SQL views and the read-only role.

Revision ID: 0003_analytics
Revises: 0002_dora
"""

from alembic import op  # noqa: F401 - used once this revision has content

revision = "0003_analytics"
down_revision = "0002_dora"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # filled in by the feature that owns this revision


def downgrade() -> None:
    pass
