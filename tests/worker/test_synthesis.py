"""`run_synthesis` end to end in-process: real engine, real database, real S3."""

from __future__ import annotations

import io

import pytest
import soundfile as sf
from sqlalchemy.orm import Session, sessionmaker

from shared import tenants
from shared.config import Settings
from shared.db import transaction
from shared.jobs import state as jobs
from shared.models import Job, Worker
from worker.context import WorkerContext
from worker.synthesis import run_synthesis

pytestmark = pytest.mark.slow


@pytest.fixture
def ctx(farm_settings: Settings) -> WorkerContext:
    return WorkerContext.build(farm_settings.model_copy(update={"worker_name": "test-worker"}))


def make_job(sessions: sessionmaker[Session], **fields: object) -> str:
    base = {"engine": "kokoro", "voice": "jf_alpha", "mode": "clone", "language": "en", "format": "wav"}
    with transaction(sessions) as session:
        tenant = tenants.get_or_create_tenant(session, "acme")
        job, _ = jobs.create_job(session, tenant_id=tenant.id, idempotency_key=None, **(base | fields))
        return job.id


def test_long_text_is_split_stored_and_reported(ctx: WorkerContext, sessions: sessionmaker[Session]) -> None:
    text = "The first sentence is here. " * 6 + "And this is the last one, which ends the text."
    job_id = make_job(sessions, text=text, format="flac", sample_rate=16000)
    assert run_synthesis(ctx, job_id) == "succeeded"
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == "succeeded" and job.attempts == 1 and job.result
        result = job.result
    segments = result["segments"]
    assert len(segments) >= 2
    assert " ".join(s["text"] for s in segments).replace("  ", " ") == text.strip()
    assert all(a["end_s"] <= b["start_s"] for a, b in zip(segments, segments[1:], strict=False))
    assert segments[-1]["end_s"] == pytest.approx(result["duration_s"], abs=0.01)
    data = ctx.storage.get(result["key"])
    assert len(data) == result["bytes"]
    audio, rate = sf.read(io.BytesIO(data))
    assert rate == result["sample_rate"] == 16000
    assert len(audio) / rate == pytest.approx(result["duration_s"], abs=0.01)
    with sessions() as session:
        worker = session.get(Worker, "test-worker")
        assert worker is not None and worker.jobs_done == 1 and worker.audio_seconds > 1


def test_redelivered_job_is_skipped(ctx: WorkerContext, sessions: sessionmaker[Session]) -> None:
    job_id = make_job(sessions, text="Just once.")
    assert run_synthesis(ctx, job_id) == "succeeded"
    assert run_synthesis(ctx, job_id) == "skipped"
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.attempts == 1
    assert ctx.storage.list_keys(f"jobs/{job.tenant_id}/") == [job.result["key"]]  # type: ignore[index]
