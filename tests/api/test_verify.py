"""`POST /v1/verify` and the watermark in what the farm makes, on real PostgreSQL, Redis and SeaweedFS: a job run by
the worker code stores a marked file (and an unmarked one with VOICEFARM_WATERMARK off); a streamed job's segments
are marked as they are published; the endpoint finds the mark for anyone and tells the label and its job only to
the tenant that made it; its limits and bad input answer 4xx with a code."""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import numpy as np
import pytest
import redis
import soxr
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from producer.app import create_app
from shared.audio.streaming import SegmentPublisher, SegmentReader
from shared.config import Settings
from shared.models import Job
from shared.provenance import watermark
from tests.support.fixtures import auth, new_api_key
from tests.worker.test_synthesis import make_job
from worker.context import WorkerContext
from worker.synthesis import run_synthesis

RATE = 24000


def _verify(client: FlaskClient, key: str, data: bytes, name: str = "take.mp3", **form: str) -> Any:
    body: dict[str, Any] = {"audio": (io.BytesIO(data), name), **form}
    return client.post("/v1/verify", data=body, headers=auth(key), content_type="multipart/form-data")


def _stored(ctx: WorkerContext, sessions: sessionmaker[Session], job_id: str) -> bytes:
    assert run_synthesis(ctx, job_id) == "succeeded"
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.result
        return ctx.storage.get(job.result["key"])


@pytest.mark.slow
def test_a_jobs_file_is_marked_and_its_label_told_to_its_tenant_only(
    farm_settings: Settings, sessions: sessionmaker[Session], client: FlaskClient
) -> None:
    owner, stranger = new_api_key(sessions, "acme"), new_api_key(sessions, "globex")
    ctx = WorkerContext.build(farm_settings.model_copy(update={"worker_name": "test-worker"}))
    job_id = make_job(sessions, text="Every take carries the mark.", format="mp3", options={"loudness": -16.0})
    data = _stored(ctx, sessions, job_id)

    mine = _verify(client, owner, data)
    assert mine.status_code == 200, mine.get_json()
    body = mine.get_json()
    assert body["watermarked"] is True and body["score"] > 0.9 and body["analysed_s"] > 0.5
    assert body["label"]["ProduceID"] == job_id and body["label"]["Label"] == "1"
    assert body["job"]["id"] == job_id and body["job"]["status"] == "succeeded"

    theirs = _verify(client, stranger, data).get_json()
    assert theirs["watermarked"] is True and abs(theirs["score"] - body["score"]) < 1e-6
    assert "label" not in theirs and "job" not in theirs

    # With the mark off the same kind of job stores audio the detector does not flag; its label is still there.
    off = dataclasses.replace(ctx, settings=ctx.settings.model_copy(update={"watermark": False}))  # same engine
    plain = _stored(off, sessions, make_job(sessions, text="Every take carries the mark.", format="wav", seed=2))
    answer = _verify(client, owner, plain, "take.wav").get_json()
    assert answer["watermarked"] is False and answer["score"] < 0.1 and "label" in answer


def test_streamed_segments_are_marked_as_they_are_published(fresh_broker_url: str) -> None:
    from benchmarks.make_eval_set import Espeak

    espeak = Espeak()
    said = espeak.speak("A streamed segment, marked before it leaves.", "en-us+m3", 40, 160)
    segment = soxr.resample(said.astype(np.float32) / 32768.0, espeak.rate, RATE).astype(np.float32)
    publisher = SegmentPublisher(fresh_broker_url, watermark.embed)
    reader = SegmentReader(redis.Redis.from_url(fresh_broker_url), "j_stream")
    reader.open()
    publisher.publish("j_stream", 1, 0, 1, segment, RATE)
    (got,) = reader.read(1000)
    assert got.audio.shape == segment.shape
    assert watermark.detect(got.audio, RATE)[0] and not watermark.detect(segment, RATE)[0]
    publisher.close()
    reader.close()


def test_raw_pcm_is_read_at_the_rate_given(sessions: sessionmaker[Session], client: FlaskClient) -> None:
    from benchmarks.make_eval_set import Espeak

    key = new_api_key(sessions, "acme")
    espeak = Espeak()
    said = espeak.speak("Raw samples have no header.", "en-gb-x-rp+f3", 62, 160).astype(np.float32) / 32768.0
    marked = watermark.embed(soxr.resample(said, espeak.rate, RATE).astype(np.float32), RATE)
    pcm = (np.clip(marked, -1, 1) * 32767).astype("<i2").tobytes()
    body = _verify(client, key, pcm, "take.pcm", format="pcm", sample_rate=str(RATE)).get_json()
    assert body["watermarked"] is True and "label" not in body


@pytest.mark.parametrize(
    ("data", "form", "status", "code"),
    [
        (b"", {}, 400, "empty_audio"),
        (b"this is not audio at all" * 40, {}, 400, "undecodable_audio"),
        (b"\0\0" * 100, {"format": "mp4"}, 400, "invalid_format"),
        (b"\0\0" * 100, {"format": "pcm", "sample_rate": "4000"}, 400, "unsupported_sample_rate"),
        (b"\0\0" * 100, {"format": "pcm", "sample_rate": "fast"}, 400, "invalid_sample_rate"),
    ],
)
def test_bad_input_is_refused_with_a_code(
    sessions: sessionmaker[Session], client: FlaskClient, data: bytes, form: dict[str, str], status: int, code: str
) -> None:
    key = new_api_key(sessions, "acme")
    answer = _verify(client, key, data, "take.bin", **form)
    assert answer.status_code == status and answer.get_json()["error"]["code"] == code


def test_the_upload_cap_the_key_and_the_field(
    farm_settings: Settings, sessions: sessionmaker[Session], client: FlaskClient
) -> None:
    key = new_api_key(sessions, "acme")
    capped = create_app(farm_settings.model_copy(update={"max_upload_bytes": 4096})).test_client()
    answer = _verify(capped, key, b"\0" * 8192)
    assert answer.status_code == 413 and answer.get_json()["error"]["code"] == "payload_too_large"
    assert "max_upload_bytes=4096" in answer.get_json()["error"]["message"]
    anonymous = client.post("/v1/verify", data={"audio": (io.BytesIO(b"x"), "a.wav")})
    assert anonymous.status_code == 401
    missing = client.post("/v1/verify", data={"other": "x"}, headers=auth(key))
    assert missing.status_code == 400 and missing.get_json()["error"]["code"] == "missing_audio"
