"""The error's type decides: engine failures and bugs fail the job with their own code and no internals, outages
hand the job back or keep the audio for a later finish, and a stale attempt never writes. Real engine, database
and S3; the faults are injected by replacing one call."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from shared import tenants
from shared.config import Settings
from shared.db import transaction
from shared.errors import StorageRejected, Transient, Unavailable
from shared.jobs import state as jobs
from shared.models import Job, utcnow
from worker import synthesis
from worker.context import WorkerContext
from worker.synthesis import run_synthesis

pytestmark = pytest.mark.slow


@pytest.fixture
def ctx(farm_settings: Settings) -> Iterator[WorkerContext]:
    ctx = WorkerContext.build(farm_settings.model_copy(update={"worker_name": "attempts-test"}))
    yield ctx
    ctx.stop()


def make_job(sessions: sessionmaker[Session], text: str = "Just once.") -> str:
    fields = {"engine": "kokoro", "voice": "jf_alpha", "mode": "clone", "language": "en", "format": "wav"}
    with transaction(sessions) as session:
        tenant = tenants.get_or_create_tenant(session, "acme")
        job, _ = jobs.create_job(session, tenant_id=tenant.id, idempotency_key=None, text=text, **fields)
        return job.id


def row(sessions: sessionmaker[Session], job_id: str) -> Job:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


@pytest.mark.parametrize(
    ("raised", "code"),
    [
        (RuntimeError("CUDA error: device-side assert at /opt/secret/kernel.cu:42"), "engine_error"),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "engine_out_of_memory"),
        (MemoryError(), "engine_out_of_memory"),
    ],
)
def test_an_engine_failure_fails_the_job_with_its_own_code_and_no_internals(
    ctx: WorkerContext, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch, raised: Exception, code: str
) -> None:
    def broken(*_: Any, **__: Any) -> Any:
        raise raised

    monkeypatch.setattr(ctx.engine, "synthesize", broken)
    job_id = make_job(sessions)
    assert run_synthesis(ctx, job_id) == "failed"
    job = row(sessions, job_id)
    assert (job.status, job.error_code) == ("failed", code)
    assert job.error_message and "/opt" not in job.error_message and "kernel" not in job.error_message


def test_a_bug_outside_the_engine_is_an_internal_error(
    ctx: WorkerContext, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_encode(*_: Any, **__: Any) -> Any:
        raise KeyError("sample_rate_table")

    monkeypatch.setattr(synthesis, "encode", broken_encode)
    job_id = make_job(sessions)
    assert run_synthesis(ctx, job_id) == "failed"
    job = row(sessions, job_id)
    assert job.error_code == "internal_error" and "sample_rate_table" not in (job.error_message or "")


def test_an_outage_before_the_work_hands_the_job_back_uncounted(
    ctx: WorkerContext, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(*_: Any, **__: Any) -> Any:
        raise Unavailable("object storage unreachable: EndpointConnectionError")

    monkeypatch.setattr(synthesis, "split_text", down)
    job_id = make_job(sessions)
    with pytest.raises(Transient):
        run_synthesis(ctx, job_id)
    job = row(sessions, job_id)
    assert (job.status, job.attempts, job.lost_attempts, job.transient_retries) == ("queued", 1, 0, 1)
    monkeypatch.undo()
    assert run_synthesis(ctx, job_id) == "succeeded"


def test_storage_down_at_the_upload_keeps_the_audio_and_finishes_later(
    ctx: WorkerContext, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_put = ctx.storage.put
    outage = {"left": 3}
    synthesized = []
    real_speak = synthesis._speak

    def flaky_put(*args: Any, **kwargs: Any) -> None:
        if outage["left"]:
            outage["left"] -= 1
            raise Unavailable("object storage unreachable: EndpointConnectionError")
        real_put(*args, **kwargs)

    def counting_speak(*args: Any, **kwargs: Any) -> Any:
        synthesized.append(args[1])
        return real_speak(*args, **kwargs)

    monkeypatch.setattr(ctx.storage, "put", flaky_put)
    monkeypatch.setattr(synthesis, "_speak", counting_speak)
    monkeypatch.setattr(ctx.settings, "retry_backoff_max_s", 1)
    job_id = make_job(sessions)
    assert run_synthesis(ctx, job_id) == "deferred"
    assert row(sessions, job_id).status == "running"
    assert ctx.finisher.attempts() == [jobs.Attempt(job_id, 1, "attempts-test")]
    ctx.finisher.start()
    deadline = time.monotonic() + 30
    while row(sessions, job_id).status == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    job = row(sessions, job_id)
    assert job.status == "succeeded" and job.attempts == 1 and job.result is not None
    assert synthesized == ["Just once."]  # synthesized once; only the upload was retried
    assert ctx.storage.list_keys(f"jobs/{job.tenant_id}/{job_id}/") == [job.result["key"]]


def test_a_stale_attempt_uploads_nothing_that_a_result_names(
    ctx: WorkerContext, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = make_job(sessions)
    real_finish = ctx.finisher.finish

    def taken_over_first(pending: Any) -> str:
        # Between the synthesis and the finish, the lease lapsed and another worker claimed and finished the job.
        with transaction(sessions) as session:
            session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow()))
        with transaction(sessions) as session:
            claimed = jobs.claim(session, job_id, "winner", 60, 3)
            assert claimed is not None
            jobs.complete(session, claimed[1], {"key": "winner-key", "sha256": "w"})
        return real_finish(pending)

    monkeypatch.setattr(ctx.finisher, "finish", taken_over_first)
    assert run_synthesis(ctx, job_id) == "lease_lost"
    job = row(sessions, job_id)
    assert job.result == {"key": "winner-key", "sha256": "w"} and job.attempts == 2
    assert ctx.storage.list_keys(f"jobs/{job.tenant_id}/{job_id}/") == []  # its own upload was deleted


def test_storage_refusing_a_kept_finish_fails_the_job_with_its_code(
    ctx: WorkerContext, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}

    def put(*_: Any, **__: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:  # down at first, then refusing (bad credentials after a rotation, say)
            raise Unavailable("object storage unreachable: EndpointConnectionError")
        raise StorageRejected("object storage refused the request (403 AccessDenied)")

    monkeypatch.setattr(ctx.storage, "put", put)
    monkeypatch.setattr(ctx.settings, "retry_backoff_max_s", 1)
    job_id = make_job(sessions)
    assert run_synthesis(ctx, job_id) == "deferred"
    ctx.finisher.start()
    deadline = time.monotonic() + 30
    while row(sessions, job_id).status == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    job = row(sessions, job_id)
    assert (job.status, job.error_code) == ("failed", "storage_error")
    assert ctx.finisher.attempts() == []


def test_announcements_run_off_the_engine_path_in_order_and_survive_a_failure() -> None:
    from worker.notify import Announcer

    heard: list[str] = []
    release = threading.Event()

    def announce(job_id: str) -> None:
        release.wait(5)  # a slow announcement (a Redis or database round trip) holds nobody but this thread
        if job_id == "bad":
            raise RuntimeError("broker down")
        heard.append(job_id)

    announcer = Announcer(announce)
    started = time.perf_counter()
    for job_id in ("j1", "bad", "j2"):
        announcer(job_id)
    assert time.perf_counter() - started < 0.5 and heard == []  # the caller went on at once
    release.set()
    announcer.close(timeout=5)
    assert heard == ["j1", "j2"]


def wait_status(sessions: sessionmaker[Session], job_id: str, status: str, seconds: float = 30) -> Job:
    deadline = time.monotonic() + seconds
    while (job := row(sessions, job_id)).status != status and time.monotonic() < deadline:
        time.sleep(0.05)
    return job


def test_a_worker_finishes_behind_the_engine_and_a_stop_waits_for_it(
    ctx: WorkerContext, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    # As in a Celery worker: the upload and the completion run on the finisher's thread, the engine goes on.
    ctx.finish_behind = True
    ctx.start()
    real_put = ctx.storage.put
    slow = threading.Event()

    def held_put(*args: Any, **kwargs: Any) -> None:
        slow.wait(30)  # the upload takes as long as the test says
        real_put(*args, **kwargs)

    monkeypatch.setattr(ctx.storage, "put", held_put)
    first = make_job(sessions, "First line.")
    assert run_synthesis(ctx, first) == "finishing"
    assert row(sessions, first).status == "running" and [a.job_id for a in ctx.finisher.attempts()] == [first]
    # The engine's next job runs while the first is still uploading.
    second = make_job(sessions, "Second line.")
    assert run_synthesis(ctx, second) == "finishing"
    slow.set()
    done = wait_status(sessions, first, "succeeded")
    assert done.result is not None and ctx.storage.list_keys(f"jobs/{done.tenant_id}/{first}/") == [done.result["key"]]
    assert wait_status(sessions, second, "succeeded").status == "succeeded"

    # A stop right after a hand-off finishes the job before it returns, not a lease later.
    slow.clear()
    threading.Timer(0.5, slow.set).start()
    third = make_job(sessions, "Third line.")
    assert run_synthesis(ctx, third) == "finishing"
    ctx.stop()
    assert row(sessions, third).status == "succeeded" and ctx.finisher.attempts() == []


def test_a_full_spool_finishes_in_the_engines_path(
    ctx: WorkerContext, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx.finish_behind = True
    ctx.start()
    monkeypatch.setattr(ctx.settings, "finish_spool_bytes", 1000)  # no take fits: nothing is held
    job_id = make_job(sessions)
    assert run_synthesis(ctx, job_id) == "succeeded" and row(sessions, job_id).status == "succeeded"
