"""fenced attempts: lost-attempt count for quarantine, retry wait, request hash for idempotency, send time

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        # Attempts whose worker vanished (lease expired); the only count that decides quarantine.
        batch_op.add_column(sa.Column("lost_attempts", sa.Integer(), server_default="0", nullable=False))
        # Transient failures handed back while a dependency was down; they never count as failed attempts.
        batch_op.add_column(sa.Column("transient_retries", sa.Integer(), server_default="0", nullable=False))
        # SHA-256 of the canonical request body, compared when an Idempotency-Key is reused.
        batch_op.add_column(sa.Column("request_hash", sa.String(64), nullable=True))
        # When the job's current message was handed to the broker; NULL while no send is known to have worked.
        batch_op.add_column(sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("sent_at")
        batch_op.drop_column("request_hash")
        batch_op.drop_column("transient_retries")
        batch_op.drop_column("lost_attempts")
