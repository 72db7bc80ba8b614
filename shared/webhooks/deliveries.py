"""Webhook delivery records: the one owner of the webhook columns of jobs and batches and of the
`webhook_deliveries` rows.

An event is "this job reached this terminal state" or "this batch finished (for the n-th time: a re-render reopens
it)"; its id is derived from that, so every attempt at it (a Celery retry, a reconciler re-send, a duplicate
message) carries the same id and receivers can drop duplicates. Each attempt is claimed with one conditional
UPDATE that also enforces the attempt cap, so two copies of a message can never together exceed it, and gets its
row before any network traffic, so an attempt that raises or whose worker dies still shows. A delivery row names
its job or its batch, never both (a check constraint says so).
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.db import db_now, transaction
from shared.jobs.state import TERMINAL
from shared.models import ApiKey, Batch, Job, WebhookDelivery

_EVENT_NAMESPACE = uuid.UUID("6f1c3c1e-51a4-4a8e-9d0e-5b1f0b7f2a10")
SIGNATURE_VERSION = "v1"
BATCH_EVENTS = ("batch.completed", "batch.canceled", "batch.reviewed")


def event_id(job_id: str, status: str) -> str:
    """Stable across every attempt at the same event."""
    return "evt_" + uuid.uuid5(_EVENT_NAMESPACE, f"{job_id}:{status}").hex


def batch_event_id(batch_id: str, completion: int) -> str:
    """The id of a batch's n-th final event, stable across its attempts."""
    return "evt_" + uuid.uuid5(_EVENT_NAMESPACE, f"batch:{batch_id}:{completion}").hex


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
    secret: str | None  # None when the submitting key is gone (or the job predates per-key secrets)
    started_at: datetime
    # The event's subject as it was when the attempt was claimed: one of the two.
    job: Job | None = None
    batch: Batch | None = None


# An event's subject: a job (its terminal state) or a batch (its n-th finish). Every function here takes the model.
Subject = type[Job] | type[Batch]


def _ready(model: Subject) -> Any:
    """The subject is in the state its event announces: a job terminal, a batch finished."""
    return Job.status.in_(TERMINAL) if model is Job else Batch.finished_at.is_not(None)


def _subject_column(model: Subject) -> Any:
    return WebhookDelivery.job_id if model is Job else WebhookDelivery.batch_id


def claim_attempt(
    sessions: sessionmaker[Session],
    model: Subject,
    subject_id: str,
    max_attempts: int,
    url_host: str,
    *,
    in_flight_s: float = 120.0,
) -> Attempt | None:
    """Start the next attempt at a finished job's webhook or a finished batch's final event, or None when there is
    nothing (more) to send.

    An attempt unfinished after `in_flight_s` had its worker die; the last one's copy then closes the event. Both
    that age and the attempt's start are the database's clock, so a webhook worker whose clock is off neither
    closes an event another is still delivering nor keeps a dead attempt in flight."""
    with transaction(sessions) as session:
        now = db_now(session)
        number = session.execute(
            update(model)
            .where(
                model.id == subject_id,
                _ready(model),
                model.webhook_url.is_not(None),
                model.webhook_delivered_at.is_(None),
                model.webhook_gave_up_at.is_(None),
                model.webhook_attempts < max_attempts,
            )
            .values(webhook_attempts=model.webhook_attempts + 1)
            .returning(model.webhook_attempts)
        ).scalar()
        if number is None:
            # The last attempt's worker died before recording it: a later copy of the message closes the event.
            in_flight = exists().where(
                _subject_column(model) == subject_id,
                WebhookDelivery.finished_at.is_(None),
                WebhookDelivery.started_at > now - timedelta(seconds=in_flight_s),
            )
            session.execute(
                update(model)
                .where(
                    model.id == subject_id,
                    _ready(model),
                    model.webhook_delivered_at.is_(None),
                    model.webhook_gave_up_at.is_(None),
                    model.webhook_attempts >= max_attempts,
                    ~in_flight,
                )
                .values(webhook_gave_up_at=now)
            )
            return None
        job = session.get(Job, subject_id, populate_existing=True) if model is Job else None
        batch = session.get(Batch, subject_id, populate_existing=True) if model is Batch else None
        if job is not None:
            owner, event, evt = job.api_key_id, f"job.{job.status}", event_id(job.id, job.status)
        else:
            assert batch is not None
            owner, event = batch.api_key_id, str(batch.finished_event)
            evt = batch_event_id(batch.id, batch.completions)
        secret = session.scalar(select(ApiKey.webhook_secret).where(ApiKey.id == owner))
        started = now
        delivery = WebhookDelivery(
            job_id=job.id if job else None,
            batch_id=batch.id if batch else None,
            event_id=evt,
            attempt=number,
            url_host=url_host[:255],
            started_at=started,
        )
        session.add(delivery)
        session.flush()
        return Attempt(delivery.id, number, evt, event, secret, started, job=job, batch=batch)


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
    """Record how an attempt ended, on its row and in its subject's webhook summary."""
    with transaction(sessions) as session:
        now = db_now(session)  # the clock `started_at` was read from
        duration_ms = (now - attempt.started_at).total_seconds() * 1000
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
        if attempt.job is not None:
            session.execute(
                update(Job).where(Job.id == attempt.job.id, Job.webhook_delivered_at.is_(None)).values(values)
            )
        elif attempt.batch is not None:
            # Only while the batch's final event is still this one: a re-render may have finished it again since.
            session.execute(
                update(Batch)
                .where(
                    Batch.id == attempt.batch.id,
                    Batch.completions == attempt.batch.completions,
                    Batch.webhook_delivered_at.is_(None),
                )
                .values(values)
            )


def deliveries(session: Session, model: Subject, subject_id: str) -> list[WebhookDelivery]:
    """Every attempt at the job's or the batch's events, oldest first."""
    query = select(WebhookDelivery).where(_subject_column(model) == subject_id)
    return list(session.scalars(query.order_by(WebhookDelivery.id)))


def batch_owed(session: Session, batch_id: str) -> bool:
    """Whether the batch is finished and its final event still owed: for whoever just finished it to send."""
    return (
        session.scalar(
            select(Batch.id).where(
                Batch.id == batch_id,
                Batch.finished_at.is_not(None),
                Batch.webhook_url.is_not(None),
                Batch.webhook_delivered_at.is_(None),
                Batch.webhook_gave_up_at.is_(None),
            )
        )
        is not None
    )


def undelivered(
    session: Session, model: Subject, *, finished_before: datetime, quiet_since: datetime, limit: int = 500
) -> list[str]:
    """Finished jobs (or batches) whose event is still owed and has seen no attempt start since `quiet_since`:
    their message was lost (a worker died, Redis dropped it). For the reconciler to send again; re-sending is
    harmless. A batch's attempts count only from its last finish: a re-render finishes it again, a new event."""
    recent = [_subject_column(model) == model.id, WebhookDelivery.started_at >= quiet_since]
    if model is Batch:
        recent.append(WebhookDelivery.started_at >= Batch.finished_at)
    return list(
        session.scalars(
            select(model.id)
            .where(
                _ready(model),
                model.webhook_url.is_not(None),
                model.webhook_delivered_at.is_(None),
                model.webhook_gave_up_at.is_(None),
                model.finished_at < finished_before,
                ~exists().where(*recent),
            )
            .limit(limit)
        )
    )
