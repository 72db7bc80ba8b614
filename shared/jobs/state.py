"""Job state: creation, lookup, and every state change a job goes through, each one conditional UPDATE.

This module is the only writer of a job's status. The rules:
- A job is claimed only when it is `queued`, or `running` with a lapsed lease (its worker is presumed dead).
  Each claim increments `attempts`; the new value is the attempt's fencing token.
- Every later write of an attempt (progress, lease renewal, complete, fail, release) is conditional on the job id,
  that attempt number and `running`. A refused write means the attempt is over: canceled, or its lease was lost
  to another claim or to the reconciler. `refusal()` tells the two apart. The worker stops and writes nothing.
- An attempt whose lease lapsed counts in `lost_attempts`; a job that loses `max_lost` attempts is quarantined.
  That is the only rule that quarantines. Transient failures hand the job back (`release`) and count nothing.
No ORM read-modify-write anywhere: the same code is race-free on SQLite and PostgreSQL.
One clock: every time written or compared here (leases, their expiry, sent_at, finished_at) is the database's
(shared/db.py `db_now`), never the worker's, so a worker whose clock is off takes no live job and loses no lease.
Every statement that gives batch lines a final state settles their batch in the same transaction
(shared/jobs/settle.py), which is how a batch learns it is finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, insert, select, update
from sqlalchemy.orm import Session

from shared import pages, qa
from shared.db import db_now
from shared.errors import Conflict, NotFound
from shared.jobs import idempotency
from shared.jobs import settle as batch_state
from shared.models import Job

TERMINAL = ("succeeded", "failed", "canceled")
# "checking": a take is stored and the QA gate (worker/qa/step.py) has yet to pass it or ask for another.
CHECKING = "checking"
OPEN = ("queued", "running", CHECKING)
STATUSES = (*OPEN, *TERMINAL)


def create_job(
    session: Session, *, tenant_id: str, idempotency_key: str | None, request_hash: str | None = None, **fields: Any
) -> tuple[Job, bool]:
    """Insert a queued job; with an idempotency key already used by this tenant, return that job instead.

    `request_hash` (shared/jobs/idempotency.py) names the request the key came with; by default it is the hash of the
    job's fields. The key on a request with another hash is refused with 409 `idempotency_key_reused`.
    Concurrent submissions with one key all get the one job, and none of them raises.
    """
    # The database's clock: the reconciler's "unsent for a while" (`unsent`) compares created_at with it.
    stamped = {"created_at": db_now(session)} | fields
    if not idempotency_key:
        job = Job(tenant_id=tenant_id, idempotency_key=None, status="queued", request_hash=request_hash, **stamped)
        session.add(job)
        session.flush()
        return job, True
    digest = request_hash or idempotency.request_hash("job", fields)
    existing = idempotency.find(session, tenant_id, idempotency_key)
    if existing is None:
        values = {"tenant_id": tenant_id, "idempotency_key": idempotency_key, "status": "queued"}
        job_id = idempotency.insert_once(session, values | {"request_hash": digest} | stamped)
        created = session.get(Job, job_id) if job_id is not None else None
        if created is not None:
            return created, True
        # A concurrent request with the same key inserted first; its row is committed and visible now.
        existing = idempotency.find(session, tenant_id, idempotency_key)
        if existing is None:
            raise Conflict(
                "a request with this Idempotency-Key is still in progress; retry it", code="idempotency_key_in_use"
            )
    _check_same_request(existing, digest, fields)
    return existing, False


def idempotent_match(session: Session, tenant_id: str, idempotency_key: str) -> bool:
    """Whether this key already names a job (a retried submission, which must not count against limits)."""
    return idempotency.find(session, tenant_id, idempotency_key) is not None


def _check_same_request(job: Job, request_hash: str, fields: dict[str, Any]) -> None:
    """Refuse a key reused for another request: the whole canonical request is compared, through its hash."""
    if job.request_hash is not None:
        same = job.request_hash == request_hash
    else:
        # A job from before request hashes were stored: every field it recorded must match.
        same = all(
            getattr(job, name) == value for name, value in fields.items() if name not in idempotency.NOT_PART_OF_REQUEST
        )
    if not same:
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
    return pages.newest_first(
        session, query, Job, tenant_id=tenant_id, before=before, limit=limit, is_id=is_job_id, what="job"
    )


@dataclass(frozen=True)
class Attempt:
    """One claim of a job: the fencing token every write of that attempt presents."""

    job_id: str
    number: int
    worker: str


def _held(attempt: Attempt) -> Any:
    return (Job.id == attempt.job_id) & (Job.attempts == attempt.number) & (Job.status == "running")


def claim(session: Session, job_id: str, worker: str, lease_s: float, max_lost: int) -> tuple[Job, Attempt] | None:
    """Start a new attempt; None when the job is terminal, quarantined now, or running under a live lease."""
    now = db_now(session)
    _expire(session, now, max_lost, Job.id == job_id)
    number = session.scalar(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued")
        .values(
            status="running",
            attempts=Job.attempts + 1,
            worker=worker,
            started_at=now,
            progress=0.0,
            lease_expires_at=now + timedelta(seconds=lease_s),
        )
        .returning(Job.attempts)
    )
    if number is None:
        return None
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    return job, Attempt(job_id, int(number), worker)


def recover_expired(session: Session, max_lost: int, limit: int = 500) -> tuple[list[str], list[str]]:
    """Jobs whose lease lapsed: back to queued (ids in the first list) or quarantined (the second)."""
    now = db_now(session)
    ids = session.scalars(select(Job.id).where(Job.status == "running", Job.lease_expires_at < now).limit(limit)).all()
    if not ids:
        return [], []
    return _expire(session, now, max_lost, Job.id.in_(ids))


def _expire(session: Session, now: datetime, max_lost: int, *where: Any) -> tuple[list[str], list[str]]:
    lapsed = update(Job).where(Job.status == "running", Job.lease_expires_at < now, *where)
    quarantined = session.execute(
        lapsed.where(Job.lost_attempts + 1 >= max_lost)
        .values(
            status="failed",
            lost_attempts=Job.lost_attempts + 1,
            error_code="quarantined",
            error_message=f"the job lost its worker {max_lost} times (killed or stuck mid-job); it is not retried",
            finished_at=now,
            lease_expires_at=None,
        )
        .returning(Job.id, Job.batch_id)
    ).all()
    batch_state.settle(session, (batch_id for _, batch_id in quarantined))
    requeued = session.scalars(
        lapsed.values(
            status="queued", lost_attempts=Job.lost_attempts + 1, worker=None, lease_expires_at=None
        ).returning(Job.id)
    ).all()
    return list(requeued), [job_id for job_id, _ in quarantined]


def set_progress(session: Session, attempt: Attempt, progress: float, lease_s: float) -> bool:
    """Record progress and renew the lease; False when the attempt is over (see `refusal`)."""
    result = session.execute(
        update(Job)
        .where(_held(attempt))
        .values(progress=progress, lease_expires_at=db_now(session) + timedelta(seconds=lease_s))
    )
    return _rowcount(result) == 1


def renew_lease(session: Session, attempt: Attempt, lease_s: float) -> bool:
    result = session.execute(
        update(Job).where(_held(attempt)).values(lease_expires_at=db_now(session) + timedelta(seconds=lease_s))
    )
    return _rowcount(result) == 1


def release(session: Session, attempt: Attempt) -> bool:
    """Hand a claimed job back after a transient failure (a dependency was down): queued again, counted in
    `transient_retries` only, so only attempts that never came back (a worker that died) count toward quarantine."""
    result = session.execute(
        update(Job)
        .where(_held(attempt))
        .values(
            status="queued",
            worker=None,
            lease_expires_at=None,
            progress=0.0,
            transient_retries=Job.transient_retries + 1,
        )
    )
    return _rowcount(result) == 1


def complete(session: Session, attempt: Attempt, result: dict[str, Any]) -> bool:
    """The attempt succeeded with `result`; `object_key` names the object it stored (shared/jobs/objects.py)."""
    return _finish(
        session, _held(attempt), status="succeeded", result=result, progress=1.0, object_key=result.get("key")
    )


def fail(session: Session, attempt: Attempt, code: str, message: str) -> bool:
    return _finish(session, _held(attempt), status="failed", error_code=code, error_message=message)


def give_up(session: Session, job_id: str, attempt_number: int, code: str, message: str) -> bool:
    """Fail a job its last attempt handed back (retries of a transient failure ran out), unless it was claimed
    again since."""
    where = (Job.id == job_id) & (Job.attempts == attempt_number) & (Job.status == "queued")
    return _finish(session, where, status="failed", error_code=code, error_message=message)


def cancel(session: Session, tenant_id: str, job_id: str) -> tuple[Job, bool]:
    """Cancel a queued or running job (a running attempt stops at its next write); returns the job and whether
    this call canceled it (False when it was canceled already)."""
    job = get_job(session, tenant_id, job_id)
    if job.status in ("succeeded", "failed"):
        raise Conflict(f"job {job_id} already {job.status}", code="already_finished")
    changed = _finish(session, Job.id == job_id, status="canceled")
    session.refresh(job)
    return job, changed


def refusal(session: Session, attempt: Attempt) -> str:
    """Why a write of this attempt was refused: "canceled", or "lease_lost" (another attempt or the reconciler
    took the job, or it finished meanwhile)."""
    row = session.execute(select(Job.status, Job.attempts).where(Job.id == attempt.job_id)).one_or_none()
    if row is not None and row.status == "canceled":
        return "canceled"
    return "lease_lost"


def mark_sent(session: Session, job_id: str) -> None:
    """The broker took the job's message: the reconciler need not send it again."""
    session.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(sent_at=db_now(session)))


def mark_unsent(session: Session, job_id: str) -> None:
    """The job's message is known lost (a retry that could not be sent): the reconciler sends a new one."""
    session.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(sent_at=None))


def unsent(session: Session, older_than_s: float, limit: int) -> list[Job]:
    """Queued jobs with no message known to be in the broker, past the moment their own send should be done."""
    cutoff = db_now(session) - timedelta(seconds=older_than_s)
    # Batch lines not sent yet are the scheduler's backlog (shared/batches/scheduler.py), not lost sends.
    query = select(Job).where(
        Job.status == "queued", Job.sent_at.is_(None), Job.created_at < cutoff, Job.batch_id.is_(None)
    )
    return list(session.scalars(query.order_by(Job.priority.desc(), Job.created_at).limit(limit)))


def sent_before(session: Session, cutoff: datetime, limit: int) -> list[Job]:
    """Queued jobs whose last send is older than `cutoff` (the reconciler checks that the broker still holds them),
    the longest-waiting first."""
    query = select(Job).where(Job.status == "queued", Job.sent_at.is_not(None), Job.sent_at < cutoff)
    return list(session.scalars(query.order_by(Job.sent_at).limit(limit)))


def queued_page(session: Session, after: tuple[datetime, str] | None, limit: int) -> list[Job]:
    """Queued jobs in creation order, from a cursor: for re-sending a backlog the broker lost, page by page.
    Batch lines the scheduler never sent stay in the database, where the scheduler sends them in turn."""
    query = select(Job).where(Job.status == "queued", Job.batch_id.is_(None) | Job.sent_at.is_not(None))
    if after is not None:
        query = query.where((Job.created_at > after[0]) | ((Job.created_at == after[0]) & (Job.id > after[1])))
    return list(session.scalars(query.order_by(Job.created_at, Job.id).limit(limit)))


def queued_among(session: Session, job_ids: list[str]) -> list[Job]:
    if not job_ids:
        return []
    return list(session.scalars(select(Job).where(Job.id.in_(job_ids), Job.status == "queued")))


def _finish(session: Session, where: Any, settle: bool = True, **values: Any) -> bool:
    finished = session.execute(
        update(Job)
        .where(where, Job.status.in_(OPEN))
        .values(finished_at=db_now(session), lease_expires_at=None, **values)
        .returning(Job.batch_id)
    ).all()
    if settle:
        batch_state.settle(session, (batch_id for (batch_id,) in finished))
    return len(finished) == 1


def _rowcount(result: Any) -> int:
    return int(result.rowcount)


# --- batch lines and cached results (shared/batches/service.py, shared/batches/scheduler.py, shared/jobs/dedup.py) ---


def create_lines(session: Session, rows: list[dict[str, Any]], cached: dict[str, dict[str, Any]] | None = None) -> None:
    """Insert a batch's lines in one statement; each row names its id, batch_id and line_id. A line whose id is in
    `cached` is created succeeded with that result (answered from the dedup cache: no attempt runs); the rest
    are queued for the scheduler."""
    cached = cached or {}
    now = db_now(session)
    values = [
        {
            "status": "succeeded",
            "result": cached[row["id"]],
            "object_key": cached[row["id"]].get("key"),
            "progress": 1.0,
            "finished_at": now,
            "created_at": now,
            **row,
        }
        if row["id"] in cached
        else {"status": "queued", "created_at": now, **row}  # the scheduler sends lines in created_at order
        for row in rows
    ]
    if values:
        session.execute(insert(Job), values)
        batch_state.settle(session, (row["batch_id"] for row in rows if row["id"] in cached))


def complete_cached(session: Session, job_id: str, result: dict[str, Any]) -> bool:
    """Answer a queued job from a stored result (no attempt ran: `attempts` stays 0); False when it is not queued.
    The result names the source's object, which the job now shares (`object_key`). The job's loaded row is
    refreshed by the same statement."""
    now = db_now(session)
    done = session.scalar(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued")
        .values(
            status="succeeded",
            result=result,
            object_key=result.get("key"),
            progress=1.0,
            finished_at=now,
            lease_expires_at=None,
        )
        .returning(Job),
        execution_options={"populate_existing": True},
    )
    if done is not None:
        batch_state.settle(session, [done.batch_id])
    return done is not None


def cancel_queued_lines(session: Session, batch_id: str) -> int:
    """Cancel a batch's queued lines at once (running ones finish); returns how many were canceled. The caller
    settles the batch (shared/jobs/settle.py) once it has marked the batch canceled, so its event says so."""
    result = session.execute(
        update(Job)
        .where(Job.batch_id == batch_id, Job.status == "queued")
        .values(status="canceled", finished_at=db_now(session), lease_expires_at=None)
    )
    return _rowcount(result)


def replace_line(session: Session, job_id: str, take: int) -> bool:
    """Retire a batch line's take `take` for a new one: marked replaced, and canceled if it had not started.
    False when that take was replaced already (a concurrent re-render won). The batch is not settled here: the
    caller adds the new take, which decides whether the batch is finished."""
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.take == take, Job.replaced.is_(False)).values(replaced=True)
    )
    if _rowcount(result) != 1:
        return False
    _finish(session, (Job.id == job_id) & (Job.status == "queued"), settle=False, status="canceled")
    return True


# --- the QA gate (worker/qa/step.py): a take waits in "checking" while the QA pool checks it ---
# The check's fencing token is the attempt that made the take: every write below is conditional on the job id,
# that attempt number and "checking", so a check that lost the race (the reconciler re-sent it, the job was
# canceled) writes nothing. A check holds a lease like a running attempt; the reconciler re-sends a check whose
# lease lapsed (its QA worker died, or the broker lost the message).


def _checking(job_id: str, number: int) -> Any:
    return (Job.id == job_id) & (Job.attempts == number) & (Job.status == CHECKING)


def to_checking(session: Session, attempt: Attempt, result: dict[str, Any], lease_s: float) -> bool:
    """A take is stored: hand the job to the QA gate, with the take's result, under a check lease."""
    result_ = session.execute(
        update(Job)
        .where(_held(attempt))
        .values(
            status=CHECKING,
            result=result,
            progress=1.0,
            worker=None,
            lease_expires_at=db_now(session) + timedelta(seconds=lease_s),
            check_lapses=0,  # a new take: its check starts with no lapse
        )
    )
    return _rowcount(result_) == 1


def hold_check(session: Session, job_id: str, number: int, worker: str, lease_s: float) -> bool:
    """A QA worker takes the check of attempt `number`, or renews its own hold; False when that take is no longer
    waiting or another QA worker holds it under a live lease (a re-sent check then does nothing)."""
    now = db_now(session)
    free = Job.worker.is_(None) | (Job.worker == worker) | (Job.lease_expires_at < now)
    held = session.execute(
        update(Job)
        .where(_checking(job_id, number), free)
        .values(worker=worker, lease_expires_at=now + timedelta(seconds=lease_s))
    )
    return _rowcount(held) == 1


def pass_check(
    session: Session, job_id: str, number: int, worker: str, result: dict[str, Any], takes: list[dict[str, Any]]
) -> bool:
    """The gate is done: the job succeeds with the kept take's result (which says whether it passed). Only the QA
    worker holding the check may write it."""
    held = _checking(job_id, number) & (Job.worker == worker)
    return _finish(session, held, status="succeeded", result=result, qa_takes=takes, object_key=result.get("key"))


def retake(session: Session, job_id: str, number: int, worker: str, takes: list[dict[str, Any]]) -> bool:
    """The take failed the gate: queued again for another take, with the takes so far recorded. The job is
    unsent (`sent_at` NULL) until its message is sent: the scheduler sends batch lines, the reconciler the rest
    if the gate's own send fails. Only the QA worker holding the check may write it."""
    done = session.execute(
        update(Job)
        .where(_checking(job_id, number), Job.worker == worker)
        .values(
            status="queued",
            qa_takes=takes,
            result=None,
            progress=0.0,
            worker=None,
            lease_expires_at=None,
            sent_at=None,
        )
    )
    return _rowcount(done) == 1


def any_waiting_check_lapsed(session: Session) -> bool:
    """Whether some take no QA worker has taken has outlived its check lease (see `lapsed_checks`)."""
    waiting = (Job.status == CHECKING) & Job.worker.is_(None) & (Job.lease_expires_at < db_now(session))
    return session.scalar(select(Job.id).where(waiting).limit(1)) is not None


def lapsed_checks(session: Session, lease_s: float, limit: int = 500, *, queue_empty: bool = True) -> list[str]:
    """Checks to send again, their lease renewed here and their ids returned, for one re-send each: held by a QA
    worker whose lease lapsed (it died or froze), and, when the QA queue is empty (`queue_empty`), never taken
    with their lease lapsed (the message was lost: it cannot be waiting in line). While the queue holds messages a
    waiting take is most likely among them, and a re-send would only be a duplicate. A held check that lapsed
    counts in `check_lapses` (a lost message does not: no check ran); `end_lapsed_checks` ends a take whose
    checks keep lapsing, so a check that can never finish is not re-sent forever."""
    now = db_now(session)
    lapsed = (Job.status == CHECKING) & (Job.lease_expires_at < now)
    if not queue_empty:
        lapsed = lapsed & Job.worker.is_not(None)
    return list(
        session.scalars(
            update(Job)
            .where(Job.id.in_(select(Job.id).where(lapsed).limit(limit).scalar_subquery()))
            .where(lapsed)
            .values(
                lease_expires_at=now + timedelta(seconds=lease_s),
                worker=None,
                # SET reads the row as it was: a check some QA worker held lost its lease once more.
                check_lapses=Job.check_lapses + case((Job.worker.is_not(None), 1), else_=0),
            )
            .returning(Job.id)
        ).all()
    )


def end_lapsed_checks(session: Session, max_lapses: int, limit: int = 500) -> list[str]:
    """Takes whose check lost its lease for the `max_lapses`-th time (its QA worker died, froze or ran past its time
    limit on every try): the job succeeds with that take, unchecked, `result.qa` saying `needs_review` with reason
    `check_lapsed` (shared/qa.py `lapsed_verdict`), instead of being re-sent again. Each write is fenced on the
    take's attempt, its holder and its lapsed lease, so a QA worker that renews its hold meanwhile keeps it.
    Returns the ids of the jobs ended."""
    now = db_now(session)
    lapsed = (
        (Job.status == CHECKING)
        & (Job.lease_expires_at < now)
        & Job.worker.is_not(None)
        & (Job.check_lapses + 1 >= max_lapses)
    )
    ended = []
    for job in session.scalars(select(Job).where(lapsed).limit(limit)).all():
        if job.result is None:
            continue
        lapses = job.check_lapses + 1
        result, takes = qa.lapsed_verdict(job.result, list(job.qa_takes or []), lapses)
        fence = _checking(job.id, job.attempts) & (Job.worker == job.worker) & (Job.lease_expires_at < now)
        if _finish(
            session,
            fence,
            status="succeeded",
            result=result,
            qa_takes=takes,
            check_lapses=lapses,
            worker=None,
            object_key=result.get("key"),
        ):
            ended.append(job.id)
    return ended


def take_durations(session: Session, job_ids: list[str]) -> dict[str, float]:
    """The duration of each waiting take (its check's time limit grows with it, shared/queue.py)."""
    if not job_ids:
        return {}
    rows = session.execute(select(Job.id, Job.result).where(Job.id.in_(job_ids), Job.status == CHECKING)).all()
    return {str(job_id): float((result or {}).get("duration_s") or 0.0) for job_id, result in rows}


# --- fair sends (shared/queue.py `try_enqueue`): a tenant's own backlog of interactive jobs lowers its next send ---


def interactive_ahead(session: Session, job_id: str, cap: int = 256) -> int:
    """How many other interactive jobs (sent at their own priority: single jobs, clone jobs, re-renders) of this
    job's tenant are queued or running, counted up to `cap`."""
    tenant = select(Job.tenant_id).where(Job.id == job_id).scalar_subquery()
    interactive = Job.batch_id.is_(None) | (Job.priority > 0)
    ahead = (
        select(Job.id)
        .where(Job.tenant_id == tenant, Job.status.in_(("queued", "running")), interactive, Job.id != job_id)
        .limit(cap)
        .subquery()
    )
    return int(session.scalar(select(func.count()).select_from(ahead)) or 0)
