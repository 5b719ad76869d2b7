"""index batch requests by blob, for the sweep of unreferenced images

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_batch_requests_blob_sha", "batch_requests", ["blob_sha"])


def downgrade() -> None:
    op.drop_index("ix_batch_requests_blob_sha", table_name="batch_requests")
