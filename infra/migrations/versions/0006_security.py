"""Security: API keys (hashed) and the read-only API role.

Revision ID: 0006_security
Revises: 0005_services
"""

from alembic import op  # noqa: F401 - used once this revision has content

revision = "0006_security"
down_revision = "0005_services"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # filled in by the feature that owns this revision


def downgrade() -> None:
    pass
