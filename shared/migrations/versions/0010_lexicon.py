"""per-tenant pronunciation lexicon

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lexicon_entries",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("language", sa.String(length=8), nullable=False),
        sa.Column("term", sa.String(length=64), nullable=False),
        sa.Column("pronunciation", sa.String(length=256), nullable=False),
        sa.Column("alphabet", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "language", "term", name="uq_lexicon_tenant_language_term"),
    )
    op.create_index("ix_lexicon_entries_tenant_id", "lexicon_entries", ["tenant_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_lexicon_entries_tenant_id", table_name="lexicon_entries")
    op.drop_table("lexicon_entries")
