"""The reconciler against real PostgreSQL and Redis: lost messages, dead workers, quarantine."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from shared import jobs, tenants
from shared.config import Settings
from shared.db import transaction
from shared.models import Job, utcnow
from shared.queue import enqueue_job, make_celery
from shared.reconcile import job_ids_in_broker, reconcile


@pytest.fixture
def celery(farm_settings: Settings):  # type: ignore[no-untyped-def]
    return make_celery(farm_settings)


def make_job(sessions: sessionmaker[Session], age_s: float = 120) -> str:
    with transaction(sessions) as session:
        tenant = tenants.get_or_create_tenant(session, "acme")
        job, _ = jobs.create_job(
            session, tenant_id=tenant.id, idempotency_key=None, engine="kokoro", text="hi", voice="jf_alpha",
            mode="clone", language="en", format="wav", created_at=utcnow() - timedelta(seconds=age_s),
        )  # fmt: skip
        return job.id


def status(sessions: sessionmaker[Session], job_id: str) -> Job:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def test_finds_job_ids_in_the_broker(sessions: sessionmaker[Session], celery) -> None:  # type: ignore[no-untyped-def]
    ids = {make_job(sessions) for _ in range(3)}
    for job_id in ids:
        enqueue_job(celery, job_id, "synthesize", "kokoro", priority=5)
    assert job_ids_in_broker(celery) == ids


def test_requeues_only_what_the_broker_lost(sessions: sessionmaker[Session], celery) -> None:  # type: ignore[no-untyped-def]
    held, lost, fresh = make_job(sessions), make_job(sessions), make_job(sessions, age_s=0)
    enqueue_job(celery, held, "synthesize", "kokoro", 5)
    report = reconcile(sessions, celery, max_attempts=3)
    # `fresh` may still be between its commit and its send: the grace period leaves it alone.
    assert report.requeued_lost == 1
    assert job_ids_in_broker(celery) == {held, lost}
    assert reconcile(sessions, celery, max_attempts=3).requeued_lost == 0
    assert fresh not in job_ids_in_broker(celery)


def test_recovers_expired_leases_and_quarantines_repeat_offenders(
    sessions: sessionmaker[Session],
    celery,  # type: ignore[no-untyped-def]
) -> None:
    dead, offender, alive = make_job(sessions), make_job(sessions), make_job(sessions)
    with transaction(sessions) as session:
        for job_id in (dead, offender, alive):
            jobs.start_attempt(session, job_id, "w", lease_s=60)
        session.execute(update(Job).where(Job.id == offender).values(attempts=3))
        session.execute(
            update(Job).where(Job.id.in_([dead, offender])).values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    report = reconcile(sessions, celery, max_attempts=3)
    assert (report.recovered_expired, report.quarantined) == (1, 1)
    assert status(sessions, dead).status == "queued" and dead in job_ids_in_broker(celery)
    quarantined = status(sessions, offender)
    assert quarantined.status == "failed" and quarantined.error_code == "quarantined"
    assert status(sessions, alive).status == "running"
