"""the spoken AI notice: each tenant's default position for it (none, start or end)

Jobs keep their own position in `jobs.options` (`disclosure`), so only the tenant default needs a column. Every
tenant, old and new, starts with none: a notice is added only on request.

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("disclosure", sa.String(length=8), server_default="none", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("disclosure")
