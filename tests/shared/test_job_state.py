"""Job state transitions against both SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from shared import tenants
from shared.db import make_engine, make_session_factory, transaction
from shared.errors import Conflict, NotFound
from shared.jobs import state as jobs
from shared.jobs.state import Attempt
from shared.models import Job, utcnow

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


def claim(db: sessionmaker[Session], job_id: str, worker: str, lease_s: float = 60, max_lost: int = 3) -> Attempt:
    with transaction(db) as session:
        claimed = jobs.claim(session, job_id, worker, lease_s, max_lost)
        assert claimed is not None, f"{worker} could not claim {job_id}"
        return claimed[1]


def lapse(db: sessionmaker[Session], job_id: str) -> None:
    """Make the running attempt's lease run out, as a frozen or dead worker's does."""
    with transaction(db) as session:
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))


def row(db: sessionmaker[Session], job_id: str) -> Job:
    with db() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def test_lifecycle_records_timestamps_attempts_and_result(db: sessionmaker[Session]) -> None:
    job_id = new_job(db, tenant(db))
    attempt = claim(db, job_id, "w1")
    assert attempt == Attempt(job_id, 1, "w1")
    job = row(db, job_id)
    assert job.status == "running" and job.attempts == 1 and job.worker == "w1"
    assert job.started_at is not None and job.lease_expires_at is not None
    assert job.lease_expires_at > job.started_at
    with transaction(db) as session:
        assert jobs.set_progress(session, attempt, 0.5, lease_s=60)
        assert jobs.complete(session, attempt, {"key": "k"})
    job = row(db, job_id)
    assert (job.status, job.progress, job.result) == ("succeeded", 1.0, {"key": "k"})
    assert job.finished_at is not None and job.finished_at >= job.created_at
    assert job.lease_expires_at is None


def test_redelivery_after_success_is_skipped_and_never_writes_twice(db: sessionmaker[Session]) -> None:
    job_id = new_job(db, tenant(db))
    attempt = claim(db, job_id, "w1")
    with transaction(db) as session:
        assert jobs.complete(session, attempt, {"key": "first"})
    with transaction(db) as session:
        assert jobs.claim(session, job_id, "w2", 60, 3) is None
        assert not jobs.complete(session, attempt, {"key": "second"})
        assert not jobs.fail(session, attempt, "x", "y")
    job = row(db, job_id)
    assert job.result == {"key": "first"} and job.attempts == 1


def test_a_live_lease_cannot_be_claimed(db: sessionmaker[Session]) -> None:
    job_id = new_job(db, tenant(db))
    claim(db, job_id, "w1")
    with transaction(db) as session:
        # A second delivery of the message (a redelivery, a reconciler's re-send) finds the job held.
        assert jobs.claim(session, job_id, "w2", 60, 3) is None
    assert row(db, job_id).worker == "w1"


def test_a_lapsed_attempt_is_fenced_off_once_another_claims_the_job(db: sessionmaker[Session]) -> None:
    job_id = new_job(db, tenant(db))
    stale = claim(db, job_id, "frozen")
    lapse(db, job_id)
    winner = claim(db, job_id, "w2")
    assert winner.number == 2
    job = row(db, job_id)
    assert (job.attempts, job.lost_attempts, job.worker) == (2, 1, "w2")
    with transaction(db) as session:
        # Every write of the stale attempt is refused, and it learns why.
        assert not jobs.set_progress(session, stale, 0.9, 60)
        assert not jobs.renew_lease(session, stale, 60)
        assert not jobs.release(session, stale)
        assert not jobs.fail(session, stale, "x", "y")
        assert not jobs.complete(session, stale, {"key": "stale"})
        assert jobs.refusal(session, stale) == "lease_lost"
        assert jobs.complete(session, winner, {"key": "winner"})
    assert row(db, job_id).result == {"key": "winner"}


def test_a_lapsed_attempt_that_nobody_claimed_yet_is_refused_after_the_reconciler(db: sessionmaker[Session]) -> None:
    job_id = new_job(db, tenant(db))
    stale = claim(db, job_id, "frozen")
    lapse(db, job_id)
    with transaction(db) as session:
        assert jobs.recover_expired(session, max_lost=3) == ([job_id], [])
        assert not jobs.complete(session, stale, {"key": "stale"})
    job = row(db, job_id)
    assert (job.status, job.lost_attempts, job.worker) == ("queued", 1, None)


def test_cancel_and_lost_lease_are_told_apart(db: sessionmaker[Session]) -> None:
    t = tenant(db)
    job_id = new_job(db, t)
    attempt = claim(db, job_id, "w1")
    with transaction(db) as session:
        jobs.cancel(session, t, job_id)
    with transaction(db) as session:
        assert not jobs.set_progress(session, attempt, 0.5, 60)
        assert jobs.refusal(session, attempt) == "canceled"
    assert row(db, job_id).status == "canceled"


def test_one_rule_quarantines_a_job_that_keeps_losing_its_worker(db: sessionmaker[Session]) -> None:
    job_id = new_job(db, tenant(db))
    claim(db, job_id, "w1")
    lapse(db, job_id)
    claim(db, job_id, "w2")  # the first lost attempt, counted by the claim that takes over
    lapse(db, job_id)
    with transaction(db) as session:
        assert jobs.recover_expired(session, max_lost=3) == ([job_id], [])  # the second, by the reconciler
    claim(db, job_id, "w3")
    lapse(db, job_id)
    with transaction(db) as session:
        # The third lost attempt quarantines it, whoever notices first.
        assert jobs.claim(session, job_id, "w4", 60, 3) is None
    job = row(db, job_id)
    assert (job.status, job.error_code, job.lost_attempts, job.attempts) == ("failed", "quarantined", 3, 3)


def test_release_hands_a_job_back_without_counting_a_lost_attempt(db: sessionmaker[Session]) -> None:
    job_id = new_job(db, tenant(db))
    first = claim(db, job_id, "w1")
    with transaction(db) as session:
        assert jobs.release(session, first)
        assert not jobs.release(session, first)  # once only: it is not running any more
    job = row(db, job_id)
    assert (job.status, job.worker, job.lost_attempts, job.transient_retries) == ("queued", None, 0, 1)
    second = claim(db, job_id, "w2")
    assert second.number == 2  # the fencing token never goes back
    with transaction(db) as session:
        assert not jobs.give_up(session, job_id, first.number, "retries_exhausted", "-")  # claimed again since
        assert jobs.release(session, second)
        assert jobs.give_up(session, job_id, second.number, "retries_exhausted", "gave up")
    assert row(db, job_id).status == "failed"


def test_concurrent_claims_of_a_lapsed_job_have_one_winner(db: sessionmaker[Session]) -> None:
    job_id = new_job(db, tenant(db))
    claim(db, job_id, "frozen")
    lapse(db, job_id)
    barrier = threading.Barrier(6)
    winners: list[int] = []

    def race(i: int) -> None:
        barrier.wait()
        with transaction(db) as session:
            claimed = jobs.claim(session, job_id, f"w{i}", 60, 3)
        if claimed is not None:
            winners.append(claimed[1].number)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert winners == [2]
    assert row(db, job_id).lost_attempts == 1


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
        attempt = claim(db, created[0], "w1")
        with transaction(db) as s2:
            jobs.fail(s2, attempt, "bad", "bad")
        assert [j.id for j in jobs.list_jobs(session, t, status="failed")] == [created[0]]
