"""Job state: creation, lookup, and the conditional transitions that make redelivered tasks harmless.

Every transition is an UPDATE guarded by the state it expects, so two deliveries of one task can never both
record a result: the second finds the row already terminal and does nothing.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.errors import Conflict, NotFound
from shared.models import Job, utcnow

TERMINAL = ("succeeded", "failed", "canceled")
STATUSES = ("queued", "running", *TERMINAL)


def create_job(session: Session, *, tenant_id: str, idempotency_key: str | None, **fields: Any) -> tuple[Job, bool]:
    """Insert a queued job; with an idempotency key already used by this tenant, return that job instead."""
    if idempotency_key:
        existing = session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == idempotency_key))
        if existing is not None:
            _check_same_request(existing, fields)
            return existing, False
    job = Job(tenant_id=tenant_id, idempotency_key=idempotency_key, status="queued", **fields)
    session.add(job)
    try:
        session.flush()
    except IntegrityError:
        # A concurrent request with the same key won the race.
        session.rollback()
        existing = session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == idempotency_key))
        if existing is None:
            raise
        _check_same_request(existing, fields)
        return existing, False
    return job, True


def idempotent_match(session: Session, tenant_id: str, idempotency_key: str) -> bool:
    """Whether this key already names a job (a retried submission, which must not count against limits)."""
    return (
        session.scalar(select(Job.id).where(Job.tenant_id == tenant_id, Job.idempotency_key == idempotency_key))
        is not None
    )


def _check_same_request(job: Job, fields: dict[str, Any]) -> None:
    for name in ("text", "voice", "mode", "format"):
        if name in fields and getattr(job, name) != fields[name]:
            raise Conflict("Idempotency-Key was already used for a different request", code="idempotency_key_reused")


def is_job_id(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


def get_job(session: Session, tenant_id: str, job_id: str) -> Job:
    # Anything that is not an id is refused before it reaches the database.
    job = session.get(Job, job_id) if is_job_id(job_id) else None
    if job is None or job.tenant_id != tenant_id:
        raise NotFound(f"job {job_id} not found", code="job_not_found")
    return job


def list_jobs(
    session: Session, tenant_id: str, *, status: str | None = None, limit: int = 50, before: str | None = None
) -> list[Job]:
    """Newest first; `before` is the id of the last job of the previous page (cursor pagination)."""
    query = select(Job).where(Job.tenant_id == tenant_id)
    if status:
        query = query.where(Job.status == status)
    if before:
        anchor = session.get(Job, before) if is_job_id(before) else None
        if anchor is None or anchor.tenant_id != tenant_id:
            raise NotFound("cursor does not name a job", code="bad_cursor")
        query = query.where(
            (Job.created_at < anchor.created_at) | ((Job.created_at == anchor.created_at) & (Job.id < anchor.id))
        )
    return list(session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)))


def start_attempt(session: Session, job_id: str, worker: str, lease_s: int) -> Job | None:
    """Claim a job for this worker; None when it is already terminal (a redelivery after success)."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(("queued", "running")))
        .values(
            status="running",
            attempts=Job.attempts + 1,
            worker=worker,
            started_at=now,
            progress=0.0,
            lease_expires_at=now + timedelta(seconds=lease_s),
        )
    )
    if _rowcount(result) == 0:
        return None
    return session.get(Job, job_id, populate_existing=True)


def set_progress(session: Session, job_id: str, progress: float, lease_s: int) -> bool:
    """Record progress; False when the job is no longer running (canceled), so the worker can stop."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running")
        .values(progress=progress, lease_expires_at=utcnow() + timedelta(seconds=lease_s))
    )
    return _rowcount(result) == 1


def cancel(session: Session, tenant_id: str, job_id: str) -> Job:
    job = get_job(session, tenant_id, job_id)
    if job.status in ("succeeded", "failed"):
        raise Conflict(f"job {job_id} already {job.status}", code="already_finished")
    _finish(session, job_id, status="canceled")
    session.refresh(job)
    return job


def renew_lease(session: Session, job_id: str, lease_s: int) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running")
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
    )


def release(session: Session, job_id: str, worker: str) -> bool:
    """Hand a claimed job back after a transient failure (a dependency was down): queued again, its attempt not
    counted, so only attempts that never came back (a worker that died) count towards quarantine."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running", Job.worker == worker)
        .values(status="queued", attempts=Job.attempts - 1, worker=None, lease_expires_at=None)
    )
    return _rowcount(result) == 1


def complete(session: Session, job_id: str, result: dict[str, Any]) -> bool:
    return _finish(session, job_id, status="succeeded", result=result, progress=1.0)


def fail(session: Session, job_id: str, code: str, message: str) -> bool:
    return _finish(session, job_id, status="failed", error_code=code, error_message=message)


def _finish(session: Session, job_id: str, **values: Any) -> bool:
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(("queued", "running")))
        .values(finished_at=utcnow(), lease_expires_at=None, **values)
    )
    return _rowcount(result) == 1


def _rowcount(result: Any) -> int:
    return int(result.rowcount)
