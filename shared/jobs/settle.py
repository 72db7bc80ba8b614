"""Whether a batch is finished: decided in the same transaction as the line change that may finish it.

shared/jobs/state.py calls `settle` right after every statement that gives batch lines a final state, and
shared/batches/service.py calls `reopen` when a re-render adds an open line. A batch is finished when none of its
current lines (`replaced` is false) is open (queued, running, or any other state short of final); finishing sets
`finished_at`, counts up `completions` and names the final event (`batch.canceled` for a canceled batch, else
`batch.completed`), whose webhook is then owed. A review decision that leaves a finished batch no line waiting
for one owes `batch.reviewed` the same way (`reviewed`).

Race-free: the batch row is locked (SELECT ... FOR UPDATE) before its lines are counted, so of two transactions
finishing the last two lines at once, the second waits for the first to commit, then counts afresh (READ
COMMITTED takes a new snapshot per statement) and sees both lines final; the first saw the second's line still
open and left the batch alone. Exactly one of them finishes it. SQLite runs one writer at a time, so there the
second transaction's statements all come after the first's commit anyway.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from shared.db import db_now
from shared.models import Batch, Job

# Final line states (shared/jobs/state.TERMINAL, which imports this module); any other state is open.
FINAL = ("succeeded", "failed", "canceled")


def settle(session: Session, batch_ids: Iterable[str | None]) -> list[str]:
    """Finish those of these batches that have no open line left; returns the ones this call finished."""
    finished = []
    for batch_id in sorted({b for b in batch_ids if b is not None}):  # one lock order: no deadlock between batches
        status = session.scalar(
            select(Batch.status).where(Batch.id == batch_id, Batch.finished_at.is_(None)).with_for_update()
        )
        if status is None:
            continue  # finished already (or gone)
        still_open = session.scalar(
            select(exists().where(Job.batch_id == batch_id, Job.replaced.is_(False), Job.status.not_in(FINAL)))
        )
        if still_open:
            continue
        session.execute(
            update(Batch)
            .where(Batch.id == batch_id)
            .values(
                finished_at=db_now(session),  # the database's clock: the reconciler ages it (webhooks owed)
                completions=Batch.completions + 1,
                finished_event="batch.canceled" if status == "canceled" else "batch.completed",
                # A new event: its own attempts (an undelivered earlier one is superseded by it).
                webhook_attempts=0,
                webhook_delivered_at=None,
                webhook_error=None,
                webhook_gave_up_at=None,
            )
        )
        finished.append(batch_id)
    return finished


def reviewed(session: Session, batch_id: str, pending: Any) -> bool:
    """A review decision took a line out of the pending ones (shared/batches/review.py): when the batch is finished
    and `pending` (a clause on its current lines: flagged, no decision yet) finds none left, the batch's next event
    is `batch.reviewed`, owed as a final event is (a new completion, its own attempts). Locks the batch row first,
    like `settle`, so of two decisions on the last two pending lines exactly one owes the event. Returns whether
    this call owed it."""
    finished = session.scalar(
        select(Batch.id).where(Batch.id == batch_id, Batch.finished_at.is_not(None)).with_for_update()
    )
    if finished is None:
        return False  # still running: its `batch.completed` comes when it finishes
    if session.scalar(select(exists().where(Job.batch_id == batch_id, Job.replaced.is_(False), pending))):
        return False
    session.execute(
        update(Batch)
        .where(Batch.id == batch_id)
        .values(
            completions=Batch.completions + 1,
            finished_event="batch.reviewed",
            webhook_attempts=0,
            webhook_delivered_at=None,
            webhook_error=None,
            webhook_gave_up_at=None,
        )
    )
    return True


def reopen(session: Session, batch_id: str) -> None:
    """A line is open again (a re-render): the batch is not finished until that line is."""
    session.execute(update(Batch).where(Batch.id == batch_id).values(finished_at=None))
