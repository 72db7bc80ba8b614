"""The dedup cache against real PostgreSQL, Redis and SeaweedFS: a job identical in everything that shapes its
audio is answered complete at submit from the stored audio, copied to its own key. How fast a hit answers is a
benchmark figure (`./run.sh bench`, "cached duplicate"), not a test."""

from __future__ import annotations

import hashlib

from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.storage import Storage
from tests.support.batches import broker_messages, finish_like_a_worker, row
from tests.support.fixtures import auth, new_api_key

BODY = {"text": "The same line, spoken again.", "seed": 11, "format": "wav"}


def submit(client: FlaskClient, key: str, body: dict) -> dict:
    response = client.post("/v1/jobs", json=body, headers=auth(key))
    assert response.status_code == 202, response.get_json()
    return dict(response.get_json())


def synthesized(client: FlaskClient, key: str, sessions: sessionmaker[Session], storage: Storage) -> dict:
    first = submit(client, key, BODY)
    assert first["status"] == "queued"
    finish_like_a_worker(sessions, storage, first["id"], data=b"RIFF stored audio")
    return first


def test_identical_job_is_answered_from_the_cache_with_its_own_object(
    client: FlaskClient, api_key: str, sessions: sessionmaker[Session], farm_settings: Settings
) -> None:
    storage = Storage.from_settings(farm_settings)
    first = synthesized(client, api_key, sessions, storage)
    before = len(broker_messages(farm_settings.broker_url))
    again = submit(client, api_key, dict(BODY, text="  The same line,   spoken again. "))  # same once normalised
    assert again["status"] == "succeeded" and again["id"] != first["id"]
    assert again["result"]["cached"] is True and again["attempts"] == 0
    job = row(sessions, again["id"])
    assert job.result is not None and job.result["key"] == f"jobs/{job.tenant_id}/{job.id}/a0.wav"
    data = storage.get(job.result["key"])
    assert hashlib.sha256(data).hexdigest() == job.result["sha256"] and data == b"RIFF stored audio"
    assert job.result["cached_from"] == first["id"]
    # Nothing was sent to a worker.
    assert len(broker_messages(farm_settings.broker_url)) == before
    audio = client.get(f"/v1/jobs/{again['id']}/audio", headers=auth(api_key))
    assert audio.status_code == 200 and audio.data == data


def test_anything_that_shapes_the_audio_misses(
    client: FlaskClient, api_key: str, sessions: sessionmaker[Session], farm_settings: Settings
) -> None:
    storage = Storage.from_settings(farm_settings)
    synthesized(client, api_key, sessions, storage)
    for change in ({"seed": 12}, {"speed": 1.1}, {"format": "flac"}, {"sample_rate": 16000}, {"text": "Other."}):
        assert submit(client, api_key, BODY | change)["status"] == "queued", change
    # The cache is per tenant.
    other = new_api_key(sessions, "other")
    assert submit(client, other, BODY)["status"] == "queued"


def test_batch_lines_are_answered_from_the_cache(
    client: FlaskClient, api_key: str, sessions: sessionmaker[Session], farm_settings: Settings
) -> None:
    storage = Storage.from_settings(farm_settings)
    synthesized(client, api_key, sessions, storage)
    lines = [{"id": "same", "text": BODY["text"]}, {"id": "new", "text": "A new line."}]
    # Batch lines pass the QA gate by default; audio no gate checked does not answer them.
    gated = client.post("/v1/batches", json={"lines": lines, "defaults": {"seed": 11}}, headers=auth(api_key))
    assert gated.status_code == 202, gated.get_json()
    assert gated.get_json()["counts"]["queued"] == 2 and not gated.get_json()["counts"].get("succeeded")
    defaults = {"seed": 11, "qa": False}
    response = client.post("/v1/batches", json={"lines": lines, "defaults": defaults}, headers=auth(api_key))
    assert response.status_code == 202
    counts = response.get_json()["counts"]
    assert counts["queued"] == 1 and counts["succeeded"] == 1, counts
    assert sum(counts.values()) == 2, counts
    manifest = client.get(f"/v1/batches/{response.get_json()['id']}/manifest", headers=auth(api_key)).get_json()
    same = manifest["lines"][0]
    assert same["cached"] is True and same["status"] == "succeeded" and same["attempts"] == 0
    job = row(sessions, same["job_id"])
    assert job.result is not None and storage.get(job.result["key"]) == b"RIFF stored audio"
