"""the QA gate: a job's gate settings and checked takes; a tenant's thresholds

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("qa", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("qa_takes", sa.JSON(), nullable=True))
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("qa", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("qa")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("qa_takes")
        batch_op.drop_column("qa")
