"""batch webhooks: a batch's final event and its delivery state; deliveries of a job or of a batch; a batch
line's request, kept for re-renders

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

FINAL = ("succeeded", "failed", "canceled")


def upgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("completions", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("finished_event", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("webhook_attempts", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("webhook_delivered_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("webhook_error", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("webhook_gave_up_at", sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.alter_column("job_id", existing_type=sa.String(length=32), nullable=True)
        batch_op.add_column(sa.Column("batch_id", sa.String(length=32), nullable=True))
        batch_op.create_foreign_key(
            "fk_webhook_deliveries_batch_id", "batches", ["batch_id"], ["id"], ondelete="CASCADE"
        )
        batch_op.create_index(batch_op.f("ix_webhook_deliveries_batch_id"), ["batch_id"], unique=False)
        batch_op.create_check_constraint("ck_webhook_deliveries_one_subject", "(job_id IS NULL) <> (batch_id IS NULL)")

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_batch_id_status", ["batch_id", "status"], unique=False)
        batch_op.add_column(sa.Column("request", sa.JSON(), nullable=True))

    # Batches that finished before this revision are finished now too, but their event is not owed: announcing
    # old batches to receivers the moment the farm is upgraded would surprise them.
    batches = sa.table(
        "batches",
        sa.column("id", sa.String),
        sa.column("finished_at", sa.DateTime(timezone=True)),
        sa.column("completions", sa.Integer),
        sa.column("finished_event", sa.String),
        sa.column("status", sa.String),
        sa.column("webhook_gave_up_at", sa.DateTime(timezone=True)),
        sa.column("webhook_error", sa.Text),
    )
    jobs = sa.table(
        "jobs",
        sa.column("batch_id", sa.String),
        sa.column("status", sa.String),
        sa.column("replaced", sa.Boolean),
        sa.column("finished_at", sa.DateTime(timezone=True)),
    )
    line = jobs.c.batch_id == batches.c.id
    open_line = sa.exists().where(line, jobs.c.replaced.is_(sa.false()), jobs.c.status.not_in(FINAL))
    last = sa.select(sa.func.max(jobs.c.finished_at)).where(line).scalar_subquery()
    op.get_bind().execute(
        batches.update()
        .where(~open_line)
        .values(
            finished_at=sa.func.coalesce(last, sa.func.current_timestamp()),
            completions=1,
            finished_event=sa.case((batches.c.status == "canceled", "batch.canceled"), else_="batch.completed"),
            webhook_gave_up_at=sa.func.current_timestamp(),
            webhook_error="finished before batch webhooks existed",
        )
    )


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM webhook_deliveries WHERE job_id IS NULL"))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("request")
        batch_op.drop_index("ix_jobs_batch_id_status")
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.drop_constraint("ck_webhook_deliveries_one_subject", type_="check")
        batch_op.drop_index(batch_op.f("ix_webhook_deliveries_batch_id"))
        batch_op.drop_constraint("fk_webhook_deliveries_batch_id", type_="foreignkey")
        batch_op.drop_column("batch_id")
        batch_op.alter_column("job_id", existing_type=sa.String(length=32), nullable=False)
    with op.batch_alter_table("batches", schema=None) as batch_op:
        for name in (
            "webhook_gave_up_at", "webhook_error", "webhook_delivered_at", "webhook_attempts", "finished_event",
            "completions", "finished_at",
        ):  # fmt: skip
            batch_op.drop_column(name)
