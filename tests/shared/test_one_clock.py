"""One clock: leases, their expiry and worker liveness are decided by the database's clock, never a worker's.

Each test runs one "worker" (or reconciler, or reader) with its Python clock ten minutes fast or slow: every clock
function the code could read (`shared.models.utcnow`, a module's own `utcnow` or `datetime`, `time.time`) is
skewed while that worker's calls run, and set right again for the other worker's. Each test names the decision
the skew would have flipped when the farm read the worker's clock (`utcnow()` in shared/jobs/state.py,
shared/engines/fleet.py, ...). Both backends: PostgreSQL's now(), and SQLite's 'now' (one machine's clock).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

import shared.models
from shared import tenants
from shared.db import db_now, make_engine, make_session_factory, transaction
from shared.engines import fleet
from shared.jobs import settle
from shared.jobs import state as jobs
from shared.jobs.state import Attempt
from shared.models import Job, Worker
from shared.webhooks import deliveries
from tests.support.needs import debian_tool

SKEW = timedelta(minutes=10)
LEASE_S = 60.0
LIVE_S = 60.0
FIELDS: dict[str, Any] = {
    "engine": "kokoro",
    "text": "hello",
    "voice": "af_heart",
    "mode": "clone",
    "language": "en",
    "format": "wav",
}
# Every module that decides by time, and so could read a clock of its own.
MODULES = (shared.models, jobs, fleet, settle, deliveries)
_real_time = time.time


@contextlib.contextmanager
def clock(offset: timedelta) -> Iterator[None]:
    """This process's clock is `offset` off while the block runs: a worker on a host whose clock is wrong."""

    class SkewedDatetime(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return datetime.now(tz) + offset

        @classmethod
        def utcnow(cls) -> Any:
            return datetime.now(UTC).replace(tzinfo=None) + offset

    def skewed_utcnow() -> datetime:
        return datetime.now(UTC) + offset

    with pytest.MonkeyPatch.context() as mp:
        for module in MODULES:
            mp.setattr(module, "utcnow", skewed_utcnow, raising=False)
            if isinstance(getattr(module, "datetime", None), type):
                mp.setattr(module, "datetime", SkewedDatetime)
        mp.setattr(time, "time", lambda: _real_time() + offset.total_seconds())
        yield


def fast() -> contextlib.AbstractContextManager[None]:
    return clock(SKEW)


def slow() -> contextlib.AbstractContextManager[None]:
    return clock(-SKEW)


@pytest.fixture
def db(database_url: str) -> sessionmaker[Session]:
    return make_session_factory(make_engine(database_url))


def new_job(db: sessionmaker[Session]) -> str:
    with transaction(db) as session:
        tenant_id = tenants.get_or_create_tenant(session, "acme").id
        job, _ = jobs.create_job(session, tenant_id=tenant_id, idempotency_key=None, **FIELDS)
        return job.id


def claim(db: sessionmaker[Session], job_id: str, worker: str, lease_s: float = LEASE_S) -> Attempt | None:
    with transaction(db) as session:
        claimed = jobs.claim(session, job_id, worker, lease_s, max_lost=3)
        return None if claimed is None else claimed[1]


def row(db: sessionmaker[Session], job_id: str) -> Job:
    with db() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def lapse(db: sessionmaker[Session], job_id: str) -> None:
    """The running attempt's lease ran out five seconds ago, by the database's clock (its worker died)."""
    with transaction(db) as session:
        late = db_now(session) - timedelta(seconds=5)
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=late))


def test_db_now_is_the_databases_clock_and_one_per_transaction(db: sessionmaker[Session]) -> None:
    with transaction(db) as session:
        true_now = db_now(session)
    assert abs(true_now - datetime.now(UTC)) < timedelta(seconds=5)  # the database runs on this machine here
    for skew in (SKEW, -SKEW):
        with clock(skew), transaction(db) as session:
            first = db_now(session)
            assert abs(first - true_now) < timedelta(seconds=60), "db_now read the process's clock"
            assert db_now(session) == first  # every value one transaction computes agrees


def test_a_fast_worker_never_takes_a_live_job(db: sessionmaker[Session]) -> None:
    """Flipped before: the fast worker's `claim` saw the live lease (60 s left) as lapsed ten minutes ago, expired
    it (a lost attempt) and ran the job a second time; a fast reconciler's `recover_expired` requeued it."""
    job_id = new_job(db)
    first = claim(db, job_id, "honest")
    assert first is not None
    with fast():
        assert claim(db, job_id, "fast") is None
        with transaction(db) as session:
            assert jobs.recover_expired(session, max_lost=3) == ([], [])
    assert (row(db, job_id).attempts, row(db, job_id).worker, row(db, job_id).lost_attempts) == (1, "honest", 0)
    with transaction(db) as session:
        assert jobs.renew_lease(session, first, LEASE_S)
        assert jobs.complete(session, first, {"key": "k"})
    assert (row(db, job_id).status, row(db, job_id).attempts) == ("succeeded", 1)


def test_a_slow_workers_lease_renewal_keeps_its_job(db: sessionmaker[Session]) -> None:
    """Flipped before: the slow worker wrote `lease_expires_at` = its clock + 60 s, nine minutes in the past by
    everyone else's, on its claim and on every renewal, so an honest worker's claim took the live job (a second
    run) and the slow worker's completion was fenced off."""
    job_id = new_job(db)
    with slow():
        mine = claim(db, job_id, "slow")
        assert mine is not None
        with transaction(db) as session:
            assert jobs.set_progress(session, mine, 0.5, LEASE_S)
            assert jobs.renew_lease(session, mine, LEASE_S)
    with transaction(db) as session:
        assert row(db, job_id).lease_expires_at > db_now(session) + timedelta(seconds=LEASE_S / 2)  # type: ignore[operator]
    assert claim(db, job_id, "honest") is None
    with transaction(db) as session:
        assert jobs.recover_expired(session, max_lost=3) == ([], [])
    with slow(), transaction(db) as session:
        assert jobs.complete(session, mine, {"key": "k"})
    done = row(db, job_id)
    assert (done.status, done.attempts, done.worker, done.lost_attempts) == ("succeeded", 1, "slow", 0)


def test_an_expired_lease_is_recovered_by_the_database_clock(db: sessionmaker[Session]) -> None:
    """Flipped before: a slow reconciler (or worker) compared the lapsed lease with its own clock, ten minutes
    behind, saw it live, and left the dead worker's job running for ten more minutes."""
    job_id = new_job(db)
    assert claim(db, job_id, "dead") is not None
    lapse(db, job_id)
    with slow(), transaction(db) as session:
        assert jobs.recover_expired(session, max_lost=3) == ([job_id], [])
    again = new_job(db)
    assert claim(db, again, "dead") is not None
    lapse(db, again)
    with slow():
        taken = claim(db, again, "slow")  # a duplicate message finds the lapsed lease and takes the job
    assert taken is not None and taken.number == 2
    assert (row(db, again).worker, row(db, again).lost_attempts) == ("slow", 1)


def test_a_fast_workers_short_lease_still_lapses(db: sessionmaker[Session]) -> None:
    """Flipped before: a fast worker's lease ran ten minutes past its end, so a worker that died holding it kept its
    job for ten more minutes."""
    job_id = new_job(db)
    with fast():
        assert claim(db, job_id, "fast", lease_s=1.0) is not None
    with transaction(db) as session:
        lease_end = row(db, job_id).lease_expires_at
        assert lease_end is not None and lease_end < db_now(session) + timedelta(seconds=5)
    time.sleep(1.2)
    with transaction(db) as session:
        assert jobs.recover_expired(session, max_lost=3) == ([job_id], [])


def register(db: sessionmaker[Session], name: str) -> None:
    with transaction(db) as session:
        fleet.register_worker(session, name, engine="kokoro", model="m", capabilities={}, device="cpu")


def live(db: sessionmaker[Session]) -> int:
    with db() as session:
        return fleet.live_count(session, LIVE_S)


def test_worker_liveness_is_the_database_clocks(db: sessionmaker[Session]) -> None:
    """Flipped before: a slow worker's heartbeat was written ten minutes old, so the scheduler's window and the
    API's engines left a live worker out; a slow reader counted a worker dead for two minutes as live, a fast one
    counted every worker dead."""
    with slow():
        register(db, "slow")
        with transaction(db) as session:
            fleet.heartbeat(session, "slow")
    assert live(db) == 1
    with fast():
        assert live(db) == 1
    with transaction(db) as session:
        gone = db_now(session) - timedelta(seconds=120)
        session.execute(update(Worker).where(Worker.name == "slow").values(last_seen=gone))
    for skew in (SKEW, -SKEW):
        with clock(skew):
            assert live(db) == 0


def test_a_skewed_webhook_worker_never_closes_an_attempt_in_flight(db: sessionmaker[Session]) -> None:
    """Flipped before: a fast webhook worker saw an attempt started a second ago as started ten minutes ago, took
    its worker for dead, and marked the event given up while the attempt was still being delivered."""
    job_id = new_job(db)
    with transaction(db) as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status="failed", webhook_url="https://example.com/hook", finished_at=db_now(session))
        )
    with slow():
        first = deliveries.claim_attempt(db, Job, job_id, max_attempts=1, url_host="example.com", in_flight_s=120)
    assert first is not None
    with fast():
        assert deliveries.claim_attempt(db, Job, job_id, max_attempts=1, url_host="example.com") is None
    assert row(db, job_id).webhook_gave_up_at is None
    with slow():
        deliveries.finish_attempt(db, first, status_code=200, delivered=True)
    with db() as session:
        (delivery,) = deliveries.deliveries(session, Job, job_id)
    assert delivery.duration_ms is not None and 0 <= delivery.duration_ms < 60_000


def test_a_worker_process_under_faketime_takes_no_live_job(pg_database_url: str) -> None:
    """A real process whose whole clock (libc included) is ten minutes fast claims the job a worker holds under a
    live lease: refused, and the first worker's attempt stands. PostgreSQL only: SQLite's clock is the clock of the
    process that runs it, which faketime fakes too (on SQLite the farm is one machine, one clock)."""
    database_url = pg_database_url
    db = make_session_factory(make_engine(database_url))
    faketime = debian_tool("faketime", "faketime")
    job_id = new_job(db)
    assert claim(db, job_id, "honest") is not None
    script = textwrap.dedent(
        f"""
        from shared.db import make_engine, make_session_factory, transaction
        from shared.jobs import state
        sessions = make_session_factory(make_engine({database_url!r}))
        with transaction(sessions) as session:
            print("claimed" if state.claim(session, {job_id!r}, "faked", 60.0, 3) else "refused")
        """
    )
    env = os.environ | {"FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    for offset in ("+10m", "-10m"):
        out = subprocess.run(
            [faketime, "-f", offset, sys.executable, "-c", script],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=True,
        )
        assert out.stdout.strip() == "refused", out.stderr
    assert (row(db, job_id).attempts, row(db, job_id).worker) == (1, "honest")
