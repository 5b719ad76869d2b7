"""batches and batch requests

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Seq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("seq", Seq, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(40), nullable=False, unique=True),
        sa.Column("team_id", sa.String(40), sa.ForeignKey("teams.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(500), nullable=False),
        sa.Column("create_api_key_id", sa.String(40), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("body_hash", sa.String(64), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expire_at", TS, nullable=False),
        sa.Column("deadline_at", TS, nullable=False),
        sa.Column("cancel_time", TS, nullable=True),
        sa.Column("purged", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("result_counter", sa.BigInteger(), nullable=False, server_default="0"),
        sa.UniqueConstraint("team_id", "idempotency_key", name="uq_batches_team_idempotency"),
    )
    op.create_index("ix_batches_team_seq", "batches", ["team_id", "seq"])
    op.create_table(
        "batch_requests",
        sa.Column("seq", Seq, primary_key=True, autoincrement=True),
        sa.Column("batch_seq", Seq, sa.ForeignKey("batches.seq", ondelete="CASCADE"), nullable=False),
        sa.Column("request_id", sa.String(200), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=True),
        sa.Column("blob_sha", sa.String(64), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("available_at", TS, nullable=False),
        sa.Column("lease_owner", sa.String(80), nullable=True),
        sa.Column("lease_expires_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("result_seq", sa.BigInteger(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.UniqueConstraint("batch_seq", "request_id", name="uq_batch_requests_id"),
    )
    op.create_index("ix_batch_requests_claim", "batch_requests", ["state", "available_at"])
    op.create_index("ix_batch_requests_results", "batch_requests", ["batch_seq", "result_seq"])
    op.create_index("ix_batch_requests_batch_state", "batch_requests", ["batch_seq", "state"])


def downgrade() -> None:
    op.drop_table("batch_requests")
    op.drop_table("batches")
