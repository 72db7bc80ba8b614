"""safe for tenants: key roles, priority entitlement, secrets at rest, shared result objects, QA check lapses

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("role", sa.String(length=16), server_default="plain", nullable=False))
        batch_op.alter_column("webhook_secret", existing_type=sa.String(length=64), type_=sa.Text())
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_priority", sa.Integer(), server_default="5", nullable=False))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("check_lapses", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("object_key", sa.String(length=512), nullable=True))
        batch_op.create_index("ix_jobs_object_key", ["object_key"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_object_key")
        batch_op.drop_column("object_key")
        batch_op.drop_column("check_lapses")
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("max_priority")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("role")
        batch_op.alter_column("webhook_secret", existing_type=sa.Text(), type_=sa.String(length=64))
