"""DORA: commits, pushes, pull requests, deployments, incidents.

Revision ID: 0002_dora
Revises: 0001_core
"""

from alembic import op  # noqa: F401 - used once this revision has content

revision = "0002_dora"
down_revision = "0001_core"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # filled in by the feature that owns this revision


def downgrade() -> None:
    pass
