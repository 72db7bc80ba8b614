"""Review of the batch lines the QA gate flags: the queue of lines that wait for a person's decision, and the
decisions. The one writer of the review columns of `jobs` (`review`, `review_note`, `reviewed_by`, `reviewed_at`).

A line needs a decision when its current take (`replaced` false) succeeded with the gate's verdict
`needs_review` (worker/qa/step.py: none of its takes passed; `result.qa.needs_review` true) and no decision is
recorded. A decision is one conditional UPDATE on exactly such a line, or on one already decided (a change of
mind): a line that passed, is still open, or was re-rendered since is refused with 409 `review_not_needed`. A
re-render (shared/batches/service.py `rerender`) makes a new row, take n+1, whose review columns start empty: the
new take goes through the gate again and the old decision stays with the old take, out of the manifest. The
decision that leaves a finished batch no line waiting owes `batch.reviewed` (shared/jobs/settle.py `reviewed`),
delivered like the batch's other events (shared/webhooks/deliveries.py, worker/webhooks/deliver.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session

from shared.errors import BadRequest, Conflict, NotFound
from shared.jobs import settle as batch_state
from shared.jobs.views import iso
from shared.models import ApiKey, Batch, Job, utcnow
from shared.storage import Storage

DECISIONS = ("approved", "rejected")
MAX_NOTE = 2000


def flagged() -> Any:
    """The current take of a line succeeded with the gate's verdict needs_review."""
    return (
        (Job.status == "succeeded")
        & Job.replaced.is_(False)
        & Job.result[("qa", "needs_review")].as_boolean().is_(True)
    )


def pending() -> Any:
    """Flagged and no decision yet: the lines the review queue lists."""
    return flagged() & Job.review.is_(None)


@dataclass(frozen=True)
class Counts:
    flagged: int = 0
    approved: int = 0
    rejected: int = 0

    @property
    def pending(self) -> int:
        return self.flagged - self.approved - self.rejected

    def view(self) -> dict[str, int]:
        return {"flagged": self.flagged, "pending": self.pending, "approved": self.approved, "rejected": self.rejected}


def counts(session: Session, batch_ids: Iterable[str]) -> dict[str, Counts]:
    """Each batch's flagged current lines, and how many of them are approved and rejected (the rest pend)."""
    ids = list(batch_ids)
    found = {batch_id: Counts() for batch_id in ids}
    if not ids:
        return found
    rows = session.execute(
        select(
            Job.batch_id,
            func.count(),
            func.sum(case((Job.review == "approved", 1), else_=0)),
            func.sum(case((Job.review == "rejected", 1), else_=0)),
        )
        .where(Job.batch_id.in_(ids), flagged())
        .group_by(Job.batch_id)
    ).all()
    for batch_id, total, approved, rejected in rows:
        found[str(batch_id)] = Counts(int(total), int(approved or 0), int(rejected or 0))
    return found


def queue(session: Session, batch: Batch, *, every_line: bool = False) -> list[Job]:
    """The lines waiting for a decision, in file order; with `every_line`, every current line."""
    query = select(Job).where(Job.batch_id == batch.id, Job.replaced.is_(False))
    if not every_line:
        query = query.where(pending())
    return list(session.scalars(query.order_by(Job.line_no, Job.id)))


def decide(
    session: Session, batch: Batch, line_id: str, decision: Any, note: Any, api_key_id: str | None
) -> tuple[Job, bool]:
    """Record a decision on a flagged line's current take; returns the line and whether this decision owed the
    batch's `batch.reviewed` event (the caller sends it after the commit, shared/webhooks/deliveries.py
    `batch_owed`). 404 for a line the batch does not have, 409 `review_not_needed` for one the gate did not flag
    (or not yet: still open), 400 for a decision other than approved or rejected."""
    if decision not in DECISIONS:
        raise BadRequest('decision must be "approved" or "rejected"', code="invalid_decision")
    if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE):
        raise BadRequest(f"note must be a string of at most {MAX_NOTE} characters", code="invalid_note")
    line = session.scalar(
        select(Job.id).where(Job.batch_id == batch.id, Job.line_id == line_id, Job.replaced.is_(False))
    )
    if line is None:
        raise NotFound(f"batch {batch.id} has no line {line_id!r}", code="line_not_found")
    values = {"review": decision, "review_note": note or None, "reviewed_by": api_key_id, "reviewed_at": utcnow()}
    # First decision on a pending line, else a change of mind on a decided one; both only on the current take.
    first = _rowcount(session.execute(update(Job).where(Job.id == line, pending()).values(values)))
    if first != 1:
        decided = flagged() & Job.review.is_not(None)
        if _rowcount(session.execute(update(Job).where(Job.id == line, decided).values(values))) != 1:
            raise Conflict(
                f"line {line_id!r} needs no review: its current take is not one the QA gate flagged",
                code="review_not_needed",
            )
    owed = first == 1 and batch_state.reviewed(session, batch.id, pending())
    job = session.get(Job, line, populate_existing=True)
    assert job is not None
    return job, owed


def _rowcount(result: Any) -> int:
    return int(result.rowcount)


def reviewers(session: Session, lines: Iterable[Job]) -> dict[str, str]:
    """The label of each key that made a decision among these lines, by key id."""
    ids = {line.reviewed_by for line in lines if line.reviewed_by}
    if not ids:
        return {}
    return {
        str(k): str(label) for k, label in session.execute(select(ApiKey.id, ApiKey.label).where(ApiKey.id.in_(ids)))
    }


def decision_view(job: Job, labels: dict[str, str]) -> dict[str, Any] | None:
    if job.review is None:
        return None
    by = {"key_id": job.reviewed_by, "label": labels.get(job.reviewed_by or "")}
    return {"decision": job.review, "note": job.review_note, "by": by, "at": iso(job.reviewed_at)}


def line_view(job: Job, storage: Storage, expiry_s: int, labels: dict[str, str]) -> dict[str, Any]:
    """One line as the review page shows it: the script, what was spoken and what the recogniser heard, the
    gate's checks (each `{value, threshold, bound, pass}`) of the kept take, its takes, where to hear it, and
    the decision so far."""
    result = job.result or {}
    report = result.get("qa") or {}
    checks = report.get("checks") or {}
    heard = report.get("transcript")
    if heard is None:  # a report from before the summary carried it: the kept take's own record
        kept = report.get("kept_take")
        heard = next((t.get("transcript") for t in job.qa_takes or [] if t.get("take") == kept), None)
    audio = job.status == "succeeded" and bool(result.get("key"))
    return {
        "line_id": job.line_id,
        "line_no": job.line_no,
        "job_id": job.id,
        "take": job.take,
        "status": job.status,
        "text": job.text,
        "normalized_text": result.get("normalized_text"),
        "heard": heard,
        "language": job.language,
        "voice": job.voice,
        "seed": job.seed,
        "speed": job.speed,
        "qa": None if not report else ("passed" if report.get("passed") else "needs_review"),
        "qa_takes": report.get("takes"),
        "kept_take": report.get("kept_take"),
        "checks": checks,
        "failed_checks": [name for name, check in checks.items() if not check.get("pass")],
        "history": report.get("history") or [],
        "duration_s": result.get("duration_s"),
        "format": result.get("format") or job.format,
        "audio_url": storage.presigned_url(result["key"], expiry_s) if audio else None,
        "audio_path": f"/v1/jobs/{job.id}/audio" if audio else None,
        "review": decision_view(job, labels),
    }
