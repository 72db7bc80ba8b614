"""The QA gate always ends: a check's time limits grow with its take, and a take whose check keeps losing its
lease ends `needs_review` (reason `check_lapsed`) after `max_check_lapses` lapses instead of being re-sent
forever. Over real PostgreSQL/SQLite, Redis and SeaweedFS, with a real `voicefarm qa-worker` process."""

from __future__ import annotations

import hashlib
import io
import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import redis
import soundfile as sf
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from shared import tenants
from shared.config import Settings
from shared.db import make_engine, make_session_factory, transaction
from shared.jobs import state as jobs
from shared.models import Job, utcnow
from shared.queue import QA_QUEUE, CheckLimits, enqueue_check, make_celery, queue_keys, visibility_timeout_s
from shared.reconcile import Reconciler
from shared.storage import Storage
from tests.support.livefarm import CLI, farm_env
from voicefarm.ops import services
from worker.finisher import attempt_key

FIELDS: dict[str, Any] = {"engine": "kokoro", "text": "hello", "voice": "af_heart", "mode": "clone", "language": "en"}


def _take(db: sessionmaker[Session], storage: Storage | None = None, duration_s: float = 1.0) -> str:
    """A job whose take is stored (when `storage` is given: a real wav) and waits for the gate."""
    with transaction(db) as session:
        tenant = tenants.get_or_create_tenant(session, "acme")
        job, _ = jobs.create_job(session, tenant_id=tenant.id, idempotency_key=None, qa={}, **FIELDS)
        job_id, tenant_id = job.id, tenant.id
    with transaction(db) as session:
        claimed = jobs.claim(session, job_id, "w1", 60, 3)
        assert claimed is not None
        attempt = claimed[1]
    key = attempt_key(tenant_id, attempt, "wav")
    data = b""
    if storage is not None:
        buffer = io.BytesIO()
        rate = 24000
        tone = 0.2 * np.sin(2 * np.pi * 220 * np.arange(int(rate * duration_s)) / rate)
        sf.write(buffer, tone.astype(np.float32), rate, format="WAV", subtype="PCM_16")
        data = buffer.getvalue()
        storage.put(key, data, "wav")
    result = {
        "key": key,
        "format": "wav",
        "sample_rate": 24000,
        "duration_s": duration_s,
        "sha256": hashlib.sha256(data).hexdigest(),
        "qa_take": {"seed": 7, "speed": 1.0, "worker": "w1"},
    }
    with transaction(db) as session:
        assert jobs.to_checking(session, attempt, result, 60)
    return job_id


def _row(db: sessionmaker[Session], job_id: str) -> Job:
    with db() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def _lapse(db: sessionmaker[Session], job_id: str, worker: str | None) -> None:
    with transaction(db) as session:
        late = utcnow() - timedelta(seconds=1)
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=late, worker=worker))


def test_time_limits_grow_with_the_take_and_stay_under_the_visibility_timeout(farm_settings: Settings) -> None:
    limits = CheckLimits.from_settings(farm_settings)
    assert limits.for_take(0.0) == (120.0, 150.0)
    assert limits.for_take(10.0) == (160.0, 190.0)  # 120 s + 4 s per second of audio
    assert limits.for_take(600.0) == (2520.0, 2550.0)  # a 10-minute take: far beyond the old fixed 300 s
    assert limits.for_take(10**6) == limits.longest()  # capped
    assert limits.longest()[1] < visibility_timeout_s(farm_settings)
    tiny = CheckLimits.from_settings(farm_settings.model_copy(update={"qa_check_time_base_s": 1.0}))
    assert tiny.for_take(2.0) == (9.0, 39.0)


def test_a_take_whose_check_lapses_n_times_ends_needs_review(database_url: str) -> None:
    db = make_session_factory(make_engine(database_url))
    job_id = _take(db)
    for lapse in (1, 2):
        _lapse(db, job_id, "qa-stuck")
        with transaction(db) as session:
            assert jobs.end_lapsed_checks(session, 3) == []
            assert jobs.lapsed_checks(session, 60, queue_empty=False) == [job_id]  # re-sent, counted
        assert (_row(db, job_id).status, _row(db, job_id).check_lapses) == ("checking", lapse)
    # A check never taken (its message lost) is re-sent but not counted: no check ran.
    _lapse(db, job_id, None)
    with transaction(db) as session:
        assert jobs.end_lapsed_checks(session, 3) == []
        assert jobs.lapsed_checks(session, 60, queue_empty=True) == [job_id]
    assert _row(db, job_id).check_lapses == 2
    # A QA worker that renews its hold in time keeps it: the lapse is fenced on the lease.
    with transaction(db) as session:
        assert jobs.hold_check(session, job_id, _row(db, job_id).attempts, "qa-live", 60)
        assert jobs.end_lapsed_checks(session, 3) == []
    # The third lapse ends it: succeeded with the take, flagged for review, never sent again.
    _lapse(db, job_id, "qa-stuck")
    with transaction(db) as session:
        assert jobs.end_lapsed_checks(session, 3) == [job_id]
        assert jobs.lapsed_checks(session, 60, queue_empty=True) == []
    job = _row(db, job_id)
    assert job.status == "succeeded" and job.check_lapses == 3 and job.result is not None
    report = job.result["qa"]
    assert report["needs_review"] is True and report["passed"] is False and report["reason"] == "check_lapsed"
    assert report["takes"] == 1 and report["kept_take"] == 1 and report["check_lapses"] == 3
    assert "qa_take" not in job.result and job.object_key == job.result["key"]
    assert job.qa_takes is not None and job.qa_takes[-1]["reason"] == "check_lapsed"
    # A new take starts with no lapse.
    other = _take(db)
    assert _row(db, other).check_lapses == 0


def test_a_re_sent_check_carries_time_limits_for_its_take(
    farm_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    job_id = _take(sessions, duration_s=30.0)
    _lapse(sessions, job_id, "qa-dead")
    reconciler = Reconciler.from_settings(farm_settings, sessions, make_celery(farm_settings))
    assert reconciler.run_once().checks_resent == 1
    client = redis.Redis.from_url(farm_settings.broker_url)
    messages = [json.loads(raw) for key in queue_keys(QA_QUEUE) for raw in client.lrange(key, 0, -1)]
    client.close()
    assert [m["headers"]["timelimit"] for m in messages] == [[270.0, 240.0]]  # hard, soft: 120 + 4 x 30 s


def test_a_check_that_always_runs_past_its_limit_ends_needs_review_after_n_lapses(
    farm_settings: Settings, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """A real QA worker whose check always outlives its time limit (the test hook `testing.qa_check_delay_s`
    holds the take 30 s; the limit is 1 s): each try raises SoftTimeLimitExceeded in the worker, its hold
    stops being renewed, the lease lapses, and the reconciler finds the lapsed check.

    Without this change it would loop: the task's limits were a fixed 300/360 s whatever the take, and
    `lapsed_checks` re-sent every held check whose lease lapsed, with nothing counting the lapses and nothing
    ending the take, so a check that can never finish in time went checking -> lapse -> re-send -> checking for
    ever. The first N-1 rounds below are exactly that path (re-sent, still `checking`); the N-th lapse is where
    the old code would have re-sent once more and this one ends the take `needs_review`."""
    settings = farm_settings.model_copy(
        update={"job_lease_s": 2, "max_check_lapses": 3, "qa_check_time_base_s": 1.0, "qa_check_time_per_audio_s": 0}
    )
    storage = Storage.from_settings(settings)
    job_id = _take(sessions, storage)
    celery = make_celery(settings)
    reconciler = Reconciler.from_settings(settings, sessions, celery)
    env = farm_env(settings, services.free_port()) | {
        "VOICEFARM_TEST_QA_CHECK_DELAY_S": "30",
        "VOICEFARM_JOB_LEASE_S": "2",
        "VOICEFARM_QA_CHECK_TIME_BASE_S": "1",
        "VOICEFARM_QA_CHECK_TIME_PER_AUDIO_S": "0",
        "VOICEFARM_MAX_CHECK_LAPSES": "3",
    }
    log = tmp_path / "qa.log"
    proc = services.spawn([*CLI, "qa-worker", "--concurrency", "1"], env=env, log_path=log)
    resent: list[int] = []
    try:
        enqueue_check(celery, job_id, CheckLimits.from_settings(settings).for_take(1.0))
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and _row(sessions, job_id).status == "checking":
            if reconciler.run_once().checks_resent:
                resent.append(_row(sessions, job_id).check_lapses)
            time.sleep(0.3)
    finally:
        services.terminate(proc, 20)
    job = _row(sessions, job_id)
    assert job.status == "succeeded", (job.status, job.check_lapses, log.read_text()[-4000:])
    assert job.result is not None and job.result["qa"]["reason"] == "check_lapsed", job.result
    assert job.result["qa"]["needs_review"] is True and job.check_lapses == 3
    # Re-sent after the first and second lapses (as the old code did after every one), ended at the third.
    assert resent[:2] == [1, 2] and 3 not in resent, resent
    text = log.read_text()
    assert "SoftTimeLimitExceeded" in text or "soft time limit" in text.lower(), text[-4000:]
    assert storage.get(job.result["key"])  # the take it ends with is kept
