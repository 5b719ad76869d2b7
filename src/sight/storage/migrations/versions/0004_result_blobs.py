"""large batch results in the blob store: the row keeps the blob's name, indexed for the sweep

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable column with no default: a plain ALTER TABLE ADD COLUMN on both SQLite and PostgreSQL.
    op.add_column("batch_requests", sa.Column("result_sha", sa.String(64), nullable=True))
    op.create_index("ix_batch_requests_result_sha", "batch_requests", ["result_sha"])


def downgrade() -> None:
    op.drop_index("ix_batch_requests_result_sha", table_name="batch_requests")
    op.drop_column("batch_requests", "result_sha")
