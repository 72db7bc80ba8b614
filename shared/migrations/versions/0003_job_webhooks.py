"""job webhooks

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("webhook_url", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("webhook_attempts", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("webhook_delivered_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("webhook_error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("webhook_error")
        batch_op.drop_column("webhook_delivered_at")
        batch_op.drop_column("webhook_attempts")
        batch_op.drop_column("webhook_url")
