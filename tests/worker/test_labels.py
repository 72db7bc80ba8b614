"""A job's stored object carries its labels (docs/guide/labels.md): the AIGC tag naming the job, and a C2PA manifest
signed with the configured certificate; the result's size and digest are the labelled file's."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import av
import c2pa
import pytest
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.models import Job
from shared.provenance import certs
from tests.worker.test_synthesis import make_job
from worker.context import WorkerContext
from worker.synthesis import run_synthesis

pytestmark = pytest.mark.slow


@pytest.fixture
def ctx(farm_settings: Settings, tmp_path: Path) -> WorkerContext:
    cert, key = certs.ensure_signing_credentials(tmp_path / "c2pa")
    update = {"worker_name": "test-worker", "c2pa_cert": cert, "c2pa_key": key, "label_producer": "Example Co."}
    return WorkerContext.build(farm_settings.model_copy(update=update))


@pytest.mark.parametrize(("fmt", "media_type"), [("mp3", "audio/mpeg"), ("aac", "audio/mp4")])
def test_the_stored_object_names_its_job(
    ctx: WorkerContext, sessions: sessionmaker[Session], fmt: str, media_type: str
) -> None:
    job_id = make_job(sessions, text="A labelled line.", format=fmt)
    assert run_synthesis(ctx, job_id) == "succeeded"
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.result
        result = job.result
    data = ctx.storage.get(result["key"])
    assert len(data) == result["bytes"] and hashlib.sha256(data).hexdigest() == result["sha256"]
    with av.open(io.BytesIO(data)) as container:
        label = json.loads(container.metadata["AIGC"])
    assert label["ProduceID"] == job_id and label["ContentProducer"] == "Example Co." and label["Label"] == "1"
    with c2pa.Reader(media_type, io.BytesIO(data)) as reader:
        active = reader.get_active_manifest()
        assert reader.get_validation_state() in ("Valid", "Trusted")
    assert active is not None
    actions = next(a["data"]["actions"] for a in active["assertions"] if a["label"] == "c2pa.actions.v2")
    assert actions[0]["action"] == "c2pa.created"
