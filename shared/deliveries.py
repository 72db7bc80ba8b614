"""Webhook delivery records: the one owner of the jobs' webhook columns and of the `webhook_deliveries` rows.

An event is "this job reached this terminal state"; its id is derived from both, so every attempt at it (a Celery
retry, a reconciler re-send, a duplicate message) carries the same id and receivers can drop duplicates. Each
attempt is claimed with one conditional UPDATE that also enforces the attempt cap, so two copies of a message
can never together exceed it, and gets its row before any network traffic, so an attempt that raises or whose
worker dies still shows.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.db import transaction
from shared.jobs import TERMINAL
from shared.models import ApiKey, Job, WebhookDelivery, utcnow

_EVENT_NAMESPACE = uuid.UUID("6f1c3c1e-51a4-4a8e-9d0e-5b1f0b7f2a10")
SIGNATURE_VERSION = "v1"


def event_id(job_id: str, status: str) -> str:
    """Stable across every attempt at the same event."""
    return "evt_" + uuid.uuid5(_EVENT_NAMESPACE, f"{job_id}:{status}").hex


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`v1=` and the hex HMAC-SHA256 of "<timestamp>.<body>" under the key's webhook secret."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


@dataclass(frozen=True)
class Attempt:
    delivery_id: int
    number: int
    event_id: str
    event: str
    job: Job
    secret: str | None  # None when the job's key is gone (or the job predates per-key secrets)
    started_at: datetime


def claim_attempt(
    sessions: sessionmaker[Session], job_id: str, max_attempts: int, url_host: str, *, in_flight_s: float = 120.0
) -> Attempt | None:
    """Start the next attempt at a finished job's webhook, or None when there is nothing (more) to send.

    An attempt unfinished after `in_flight_s` had its worker die; the last one's copy then closes the event."""
    with transaction(sessions) as session:
        number = session.execute(
            update(Job)
            .where(
                Job.id == job_id,
                Job.status.in_(TERMINAL),
                Job.webhook_url.is_not(None),
                Job.webhook_delivered_at.is_(None),
                Job.webhook_gave_up_at.is_(None),
                Job.webhook_attempts < max_attempts,
            )
            .values(webhook_attempts=Job.webhook_attempts + 1)
            .returning(Job.webhook_attempts)
        ).scalar()
        if number is None:
            # The last attempt's worker died before recording it: a later copy of the message closes the event.
            in_flight = exists().where(
                WebhookDelivery.job_id == job_id,
                WebhookDelivery.finished_at.is_(None),
                WebhookDelivery.started_at > utcnow() - timedelta(seconds=in_flight_s),
            )
            session.execute(
                update(Job)
                .where(
                    Job.id == job_id,
                    Job.webhook_delivered_at.is_(None),
                    Job.webhook_gave_up_at.is_(None),
                    Job.webhook_attempts >= max_attempts,
                    ~in_flight,
                )
                .values(webhook_gave_up_at=utcnow())
            )
            return None
        job = session.execute(select(Job).where(Job.id == job_id)).scalar_one()
        secret = session.scalar(select(ApiKey.webhook_secret).where(ApiKey.id == job.api_key_id))
        event = f"job.{job.status}"
        started = utcnow()
        row = WebhookDelivery(
            job_id=job_id,
            event_id=event_id(job_id, job.status),
            attempt=number,
            url_host=url_host[:255],
            started_at=started,
        )
        session.add(row)
        session.flush()
        return Attempt(row.id, number, row.event_id, event, job, secret, started)


def finish_attempt(
    sessions: sessionmaker[Session],
    attempt: Attempt,
    *,
    status_code: int | None = None,
    error: str | None = None,
    address: str | None = None,
    delivered: bool = False,
    give_up: bool = False,
) -> None:
    """Record how an attempt ended, on its row and in the job's webhook summary."""
    now = utcnow()
    duration_ms = (now - attempt.started_at).total_seconds() * 1000
    with transaction(sessions) as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == attempt.delivery_id)
            .values(status_code=status_code, error=error, address=address, finished_at=now, duration_ms=duration_ms)
        )
        values: dict[str, object] = {"webhook_error": error}
        if delivered:
            values["webhook_delivered_at"] = now
        if give_up:
            values["webhook_gave_up_at"] = now
        session.execute(update(Job).where(Job.id == attempt.job.id, Job.webhook_delivered_at.is_(None)).values(values))


def deliveries(session: Session, job_id: str) -> list[WebhookDelivery]:
    return list(
        session.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id).order_by(WebhookDelivery.id))
    )


def undelivered_jobs(
    session: Session, *, finished_before: datetime, quiet_since: datetime, limit: int = 500
) -> list[str]:
    """Finished jobs whose webhook is still owed and has seen no attempt start since `quiet_since`: their message
    was lost (a worker died, Redis dropped it). For the reconciler to send again; re-sending is harmless."""
    recent = exists().where(WebhookDelivery.job_id == Job.id, WebhookDelivery.started_at >= quiet_since)
    return list(
        session.scalars(
            select(Job.id)
            .where(
                Job.status.in_(TERMINAL),
                Job.webhook_url.is_not(None),
                Job.webhook_delivered_at.is_(None),
                Job.webhook_gave_up_at.is_(None),
                Job.finished_at < finished_before,
                ~recent,
            )
            .limit(limit)
        )
    )
