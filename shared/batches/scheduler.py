"""The batch scheduler: the database holds the backlog, the broker only a small window of each tenant's lines.

`top_up` sends batch lines in turn across tenants until every tenant with a backlog holds its window in flight:
`batch_window_per_worker` lines per live worker (a `workers` row seen within `worker_live_s`; at least one is
assumed, so a worker that starts finds work). A line is in flight from its send until it finishes: queued with
`sent_at` set, or running. Lines are sent at the lowest broker priority (API priority 0), so single jobs, sent
at their own priority as they come, run ahead of every batch line the broker holds.

It is called after a batch is created, from every reconciler pass, and by a worker after each terminal
transition of a batch line, so windows refill as lines finish. Calls are serialised by a PostgreSQL advisory
lock held for the pass (SQLite serialises writers itself), so two of them never overshoot a window. A line is
sent, then marked sent in the same transaction: a pass that dies between the two leaves a line that is sent
again later, and a duplicate message is harmless (a job is claimed only while queued).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from celery import Celery
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from shared.db import transaction
from shared.engines import fleet
from shared.jobs import state as jobs
from shared.models import Job
from shared.queue import enqueue_job

log = logging.getLogger(__name__)
_LOCK = 0x7666_7363_6864  # "vfschd"


def in_flight(session: Session) -> dict[str, int]:
    """Batch lines per tenant that the broker holds or a worker runs."""
    sent = (Job.status == "running") | ((Job.status == "queued") & Job.sent_at.is_not(None))
    rows = session.execute(
        select(Job.tenant_id, func.count()).where(Job.batch_id.is_not(None), sent).group_by(Job.tenant_id)
    ).all()
    return {str(tenant): int(count) for tenant, count in rows}


def backlog_tenants(session: Session) -> list[str]:
    query = select(Job.tenant_id).where(Job.batch_id.is_not(None), Job.status == "queued", Job.sent_at.is_(None))
    return [str(t) for t in session.scalars(query.distinct())]


def next_lines(session: Session, tenant_id: str, limit: int) -> list[Job]:
    """The tenant's oldest unsent lines: its batches in order, each batch's lines in file order."""
    query = select(Job).where(
        Job.tenant_id == tenant_id, Job.batch_id.is_not(None), Job.status == "queued", Job.sent_at.is_(None)
    )
    return list(session.scalars(query.order_by(Job.created_at, Job.line_no, Job.id).limit(limit)))


def interleave(queues: Iterable[list[Job]]) -> list[Job]:
    """Round-robin: the first line of each tenant, then the second of each, and so on."""
    pending = [list(q) for q in queues if q]
    out: list[Job] = []
    while pending:
        for queue in pending:
            out.append(queue.pop(0))
        pending = [q for q in pending if q]
    return out


def plan(session: Session, per_worker: int, live_s: float) -> list[Job]:
    """The lines to send now, in the order to send them."""
    window = max(1, per_worker) * max(1, fleet.live_count(session, live_s))
    held = in_flight(session)
    tenants = backlog_tenants(session)
    # The tenant with the fewest lines in flight goes first, so a newcomer is not behind a full window.
    tenants.sort(key=lambda t: (held.get(t, 0), t))
    return interleave(next_lines(session, t, window - held.get(t, 0)) for t in tenants if held.get(t, 0) < window)


def top_up(sessions: sessionmaker[Session], celery: Celery, per_worker: int, live_s: float) -> int:
    """Send lines until each tenant holds its window; returns how many were sent. A broker outage ends the pass
    early (what was sent is recorded; the rest waits for the next call)."""
    sent = 0
    with transaction(sessions) as session:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK})
        for job in plan(session, per_worker, live_s):
            try:
                enqueue_job(celery, job.id, job.kind, job.engine, job.priority, len(job.text))
            except Exception:  # kombu raises several connection error types; all mean "not sent"
                log.warning("could not send batch line %s; the next top-up sends it", job.id, exc_info=True)
                break
            jobs.mark_sent(session, job.id)
            sent += 1
    if sent:
        log.info("scheduler sent %d batch lines", sent)
    return sent


def safe_top_up(sessions: sessionmaker[Session], celery: Celery, per_worker: int, live_s: float) -> int:
    """`top_up` for callers that must not fail because of it (the API after a commit, a worker after a job):
    the reconciler's next pass tops up anyway."""
    try:
        return top_up(sessions, celery, per_worker, live_s)
    except Exception:
        log.warning("batch top-up failed; the reconciler will retry", exc_info=True)
        return 0
