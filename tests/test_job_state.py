"""Job state transitions against both SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from shared import jobs, tenants
from shared.db import make_engine, make_session_factory, transaction
from shared.errors import Conflict, NotFound

FIELDS: dict[str, Any] = {
    "engine": "kokoro",
    "text": "hello",
    "voice": "af_heart",
    "mode": "clone",
    "language": "en",
    "format": "wav",
}


@pytest.fixture
def db(database_url: str) -> sessionmaker[Session]:
    return make_session_factory(make_engine(database_url))


def tenant(db: sessionmaker[Session], name: str = "acme") -> str:
    with transaction(db) as session:
        return tenants.get_or_create_tenant(session, name).id


def new_job(db: sessionmaker[Session], tenant_id: str, key: str | None = None, **overrides: Any) -> str:
    with transaction(db) as session:
        job, _ = jobs.create_job(session, tenant_id=tenant_id, idempotency_key=key, **(FIELDS | overrides))
        return job.id


def test_lifecycle_records_timestamps_attempts_and_result(db: sessionmaker[Session]) -> None:
    job_id = new_job(db, tenant(db))
    with transaction(db) as session:
        job = jobs.start_attempt(session, job_id, "w1", lease_s=60)
        assert job is not None and job.status == "running" and job.attempts == 1 and job.worker == "w1"
        assert job.started_at is not None and job.lease_expires_at is not None
        assert job.lease_expires_at > job.started_at
    with transaction(db) as session:
        jobs.set_progress(session, job_id, 0.5, lease_s=60)
        assert jobs.complete(session, job_id, {"key": "k"})
    with db() as session:
        job = session.get(jobs.Job, job_id)
        assert job is not None
        assert (job.status, job.progress, job.result) == ("succeeded", 1.0, {"key": "k"})
        assert job.finished_at is not None and job.finished_at >= job.created_at
        assert job.lease_expires_at is None


def test_redelivery_after_success_is_skipped_and_never_writes_twice(db: sessionmaker[Session]) -> None:
    job_id = new_job(db, tenant(db))
    with transaction(db) as session:
        jobs.start_attempt(session, job_id, "w1", 60)
        assert jobs.complete(session, job_id, {"key": "first"})
    with transaction(db) as session:
        assert jobs.start_attempt(session, job_id, "w2", 60) is None
        assert not jobs.complete(session, job_id, {"key": "second"})
        assert not jobs.fail(session, job_id, "x", "y")
    with db() as session:
        job = session.get(jobs.Job, job_id)
        assert job is not None and job.result == {"key": "first"} and job.attempts == 1


def test_a_crashed_attempt_can_be_taken_over(db: sessionmaker[Session]) -> None:
    job_id = new_job(db, tenant(db))
    with transaction(db) as session:
        jobs.start_attempt(session, job_id, "dead-worker", 60)
    with transaction(db) as session:
        job = jobs.start_attempt(session, job_id, "w2", 60)
        assert job is not None and job.attempts == 2 and job.worker == "w2"


def test_idempotency_key_returns_the_same_job(db: sessionmaker[Session]) -> None:
    t = tenant(db)
    first = new_job(db, t, key="k1")
    assert new_job(db, t, key="k1") == first
    assert new_job(db, tenant(db, "other"), key="k1") != first  # keys are per tenant
    with pytest.raises(Conflict):
        new_job(db, t, key="k1", text="something else")


def test_tenants_see_only_their_jobs(db: sessionmaker[Session]) -> None:
    a, b = tenant(db, "a"), tenant(db, "b")
    job_id = new_job(db, a)
    with db() as session:
        assert jobs.get_job(session, a, job_id).id == job_id
        with pytest.raises(NotFound):
            jobs.get_job(session, b, job_id)
        assert jobs.list_jobs(session, b) == []


def test_cursor_pagination_walks_every_job_once(db: sessionmaker[Session]) -> None:
    t = tenant(db)
    created = [new_job(db, t) for _ in range(7)]
    seen: list[str] = []
    cursor = None
    with db() as session:
        while True:
            page = jobs.list_jobs(session, t, limit=3, before=cursor)
            seen.extend(j.id for j in page)
            if len(page) < 3:
                break
            cursor = page[-1].id
        assert sorted(seen) == sorted(created) and len(seen) == 7
        with transaction(db) as s2:
            jobs.fail(s2, created[0], "bad", "bad")
        assert [j.id for j in jobs.list_jobs(session, t, status="failed")] == [created[0]]


def test_release_hands_a_job_back_without_counting_the_attempt(db: sessionmaker[Session]) -> None:
    job_id = new_job(db, tenant(db))
    with transaction(db) as session:
        jobs.start_attempt(session, job_id, "w1", 60)
        assert not jobs.release(session, job_id, "someone-else")  # only the holder may hand it back
        assert jobs.release(session, job_id, "w1")
    with db() as session:
        job = session.get(jobs.Job, job_id)
        assert job is not None and (job.status, job.attempts, job.worker) == ("queued", 0, None)
