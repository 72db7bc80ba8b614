"""The reconciler: makes the broker agree with the database, which is the source of truth.

- A queued job whose message the broker no longer holds (Redis restarted without its data, a send that failed
  after the row committed) is enqueued again.
- A running job whose lease expired (its worker died mid-job) goes back to queued and is enqueued again.
- A finished job whose webhook was never attempted (its worker died right after finishing) gets one sent.
- A job that has already used up its attempts is quarantined (failed with `quarantined`) instead of looping:
  it probably kills its worker.
Re-sending is always safe: transitions are conditional and object keys deterministic, so a duplicate message
finds its job finished and does nothing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from celery import Celery
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.db import transaction
from shared.jobs import TERMINAL
from shared.models import Job, utcnow
from shared.queue import TASKS, WEBHOOK_TASK, engine_queue, enqueue_job

log = logging.getLogger(__name__)


@dataclass
class Report:
    requeued_lost: int = 0
    recovered_expired: int = 0
    quarantined: int = 0
    webhooks_sent: int = 0


def job_ids_in_broker(celery: Celery) -> set[str]:
    """Every job id the Redis broker holds: waiting in a queue, or reserved by a worker and not yet acked."""
    task_names = set(TASKS.values())
    ids: set[str] = set()
    with celery.connection_for_write() as conn:
        client = conn.default_channel.client
        raw: list[bytes] = []
        for key in client.scan_iter(match="engine.*", count=1000):
            if client.type(key) == b"list":
                raw.extend(client.lrange(key, 0, -1))
        # kombu keeps reserved messages as [payload, exchange, routing_key] in the `unacked` hash.
        for value in client.hvals("unacked"):
            raw.append(json.dumps(json.loads(value)[0]).encode())
    for item in raw:
        try:
            message = json.loads(item)
            headers = message.get("headers", {})
            if headers.get("task") in task_names:
                ids.add(_first_arg(headers.get("argsrepr", "")))
        except (ValueError, AttributeError, TypeError):
            continue
    return ids


def _first_arg(argsrepr: str) -> str:
    # argsrepr is "['<job id>']"
    return argsrepr.strip("[]() ,").strip("'\"")


def reconcile(sessions: sessionmaker[Session], celery: Celery, *, max_attempts: int, grace_s: float = 30.0) -> Report:
    report = Report()
    now = utcnow()
    recovered: list[tuple[str, str, str, int, int]] = []
    with transaction(sessions) as session:
        expired = session.scalars(
            select(Job).where(Job.status == "running", Job.lease_expires_at < now).with_for_update(skip_locked=True)
        ).all()
        for job in expired:
            if job.attempts >= max_attempts:
                job.status, job.finished_at, job.lease_expires_at = "failed", now, None
                job.error_code = "quarantined"
                job.error_message = f"the job stopped its worker {job.attempts} times; it is not retried again"
                report.quarantined += 1
            else:
                job.status, job.lease_expires_at, job.worker = "queued", None, None
                recovered.append((job.id, job.kind, job.engine, job.priority, len(job.text)))
    # The dead worker's message may sit unacked until Redis's visibility timeout: send a fresh one now.
    for job_id, kind, engine, priority, chars in recovered:
        enqueue_job(celery, job_id, kind, engine, priority, chars)
    report.recovered_expired = len(recovered)
    # Jobs just re-sent above count as held, so they are not sent twice in one pass.
    in_broker = job_ids_in_broker(celery) | {r[0] for r in recovered}
    with sessions() as session:
        queued = session.execute(
            select(Job.id, Job.kind, Job.engine, Job.priority, func.length(Job.text)).where(
                Job.status == "queued", Job.created_at < now - timedelta(seconds=grace_s)
            )
        ).all()
    for job_id, kind, engine, priority, chars in queued:
        if job_id not in in_broker:
            enqueue_job(celery, job_id, kind, engine, priority, chars)
            report.requeued_lost += 1
    report.webhooks_sent = _send_missed_webhooks(sessions, celery, now - timedelta(seconds=grace_s * 2))
    if report.requeued_lost or report.recovered_expired or report.quarantined or report.webhooks_sent:
        log.info("reconciled: %s", report)
    return report


def _send_missed_webhooks(sessions: sessionmaker[Session], celery: Celery, finished_before: datetime) -> int:
    with sessions() as session:
        missed = session.execute(
            select(Job.id, Job.engine).where(
                Job.status.in_(TERMINAL),
                Job.webhook_url.is_not(None),
                Job.webhook_attempts == 0,
                Job.finished_at < finished_before,
            )
        ).all()
    for job_id, engine in missed:
        celery.send_task(WEBHOOK_TASK, args=[job_id], queue=engine_queue(engine))
    return len(missed)
