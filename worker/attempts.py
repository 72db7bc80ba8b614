"""One attempt at a job: claim it, run the work, and let the error's type decide what happens next.

- `AttemptOver` (a fenced write was refused): stop, write nothing more, send no webhook.
- `Transient` (a dependency is down): hand the job back and re-raise; the task retries with Celery's backoff.
- `Permanent`: fail the job at once with the error's own code.
- Anything else (an engine bug, CUDA out of memory, a library error): logged with its traceback, the job fails
  with `internal_error` and a message that names no internals.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery.exceptions import SoftTimeLimitExceeded
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from shared import logs, voices
from shared.db import transaction
from shared.errors import Permanent, Transient, Unavailable
from shared.jobs import state as jobs
from shared.models import Job
from worker.context import AttemptOver, WorkerContext

log = logging.getLogger(__name__)
# The outcome of a message whose job id this farm's database does not know.
UNKNOWN = "unknown_job"
Work = Callable[[WorkerContext, Job, jobs.Attempt], str]


def classify(exc: BaseException) -> Transient | None:
    """The transient error an unexpected exception stands for, if any: an outage of a dependency."""
    if isinstance(exc, OperationalError | InterfaceError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    ):
        return Unavailable("the job database is unavailable")
    if isinstance(exc, BrokerError | ConnectionError | TimeoutError):
        return Unavailable(f"a dependency is unreachable ({type(exc).__name__})")
    return None


def run_job(ctx: WorkerContext, job_id: str, work: Work) -> str:
    """Run one attempt; returns the outcome, or raises `Transient` for the task to retry."""
    try:
        claimed = ctx.claim(job_id)
    except DBAPIError as exc:
        raise Unavailable("the job database is unavailable") from exc
    if claimed is None:
        if not _known(ctx, job_id):
            # Acked all the same (the job is not ours to run), but never silently: a farm sharing this broker
            # loses the message, and its reconciler sends it again (shared/reconcile.py).
            log.warning(
                "job %s is not in this farm's database: a message of another farm sharing this broker? Give each "
                "farm a broker of its own (BROKER_URL); see shared/identity.py",
                job_id,
            )
            return UNKNOWN
        log.info("job %s is finished or held by a live attempt; nothing to do", job_id)
        return "skipped"
    job, attempt = claimed
    with logs.log_context(tenant_id=job.tenant_id, batch_id=job.batch_id):  # the job's lines name both
        outcome = _run(ctx, job, attempt, work)
        log.info("%s job %s: %s", job.kind, job_id, outcome)
        return outcome


def _known(ctx: WorkerContext, job_id: str) -> bool:
    """Whether the job is in this farm's database (an outage counts as known: it was a skip, not a stranger)."""
    try:
        with ctx.sessions() as session:
            return session.scalar(select(Job.id).where(Job.id == job_id)) is not None
    except DBAPIError:
        return True


def _run(ctx: WorkerContext, job: Job, attempt: jobs.Attempt, work: Work) -> str:
    job_id = job.id
    ctx.crash_point("after_claim")
    try:
        return work(ctx, job, attempt)
    except AttemptOver as over:
        log.warning("job %s attempt %d stopped: %s", job_id, attempt.number, over.reason)
        return over.reason
    except Transient:
        _release(ctx, attempt)
        raise
    except Permanent as exc:
        return _fail(ctx, job, attempt, exc.code, exc.message)
    except SoftTimeLimitExceeded:
        return _fail(ctx, job, attempt, "time_limit_exceeded", "the job ran past its time limit")
    except Exception as exc:
        transient = classify(exc)
        if transient is not None:
            _release(ctx, attempt)
            raise transient from exc
        log.exception("job %s attempt %d: unexpected error", job_id, attempt.number)
        return _fail(ctx, job, attempt, "internal_error", "the worker hit an unexpected error; it has been logged")
    finally:
        ctx.current = None


def _fail(ctx: WorkerContext, job: Job, attempt: jobs.Attempt, code: str, message: str) -> str:
    try:
        with transaction(ctx.sessions) as session:
            if not jobs.fail(session, attempt, code, message):
                return jobs.refusal(session, attempt)
            if job.kind == "clone":
                voices.mark_failed(session, job.voice, code, message)
    except DBAPIError as exc:
        # The attempt keeps its lease until it lapses; then the job runs again and fails again, recorded.
        raise Unavailable("the job database is unavailable") from exc
    log.info("job %s failed: %s", job.id, code)
    ctx.notify(job.id)
    return "failed"


def _release(ctx: WorkerContext, attempt: jobs.Attempt) -> None:
    # Best effort: when the database is what is down, the lease lapses and the reconciler takes over.
    try:
        with transaction(ctx.sessions) as session:
            jobs.release(session, attempt)
    except Exception:
        log.warning("job %s: could not hand the job back", attempt.job_id, exc_info=True)
