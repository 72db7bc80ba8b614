"""verified consent before cloning: each tenant's consent policy, and the consent table (statements the farm
issued, and the record of each voice's consent: recording, transcript, scores, time, key)

Tenants that exist when this runs keep cloning with one added field (`attested`); new tenants are `verified`.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("consent_policy", sa.String(length=16), server_default="verified", nullable=False)
        )
    op.execute("UPDATE tenants SET consent_policy = 'attested'")
    op.create_table(
        "consents",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("language", sa.String(length=8), nullable=True),
        sa.Column("statement", sa.Text(), nullable=True),
        sa.Column("words", sa.JSON(), nullable=True),
        sa.Column("issued_by", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("voice_id", sa.String(length=32), nullable=True),
        sa.Column("used_by", sa.String(length=32), nullable=True),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("recording_key", sa.String(length=300), nullable=True),
        sa.Column("transcript", sa.Text(), nullable=True),
        sa.Column("scores", sa.JSON(), nullable=True),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["voice_id"], ["voices.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["issued_by"], ["api_keys.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["used_by"], ["api_keys.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("consents", schema=None) as batch_op:
        batch_op.create_index("ix_consents_tenant_id", ["tenant_id"], unique=False)
        batch_op.create_index("ix_consents_voice_id", ["voice_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("consents", schema=None) as batch_op:
        batch_op.drop_index("ix_consents_voice_id")
        batch_op.drop_index("ix_consents_tenant_id")
    op.drop_table("consents")
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("consent_policy")
