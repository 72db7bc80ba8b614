"""The dedup cache against real PostgreSQL, Redis and SeaweedFS: a job identical in everything that shapes its
audio is answered complete at submit from the stored audio, which it shares (no copy). How fast a hit answers is
a benchmark figure (`./run.sh bench`, "cached duplicate"), not a test."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import requests
from flask.testing import FlaskClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.db import transaction
from shared.jobs import dedup, objects
from shared.models import Job, Tenant
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


def test_identical_job_is_answered_from_the_cache_sharing_the_object(
    client: FlaskClient, api_key: str, sessions: sessionmaker[Session], farm_settings: Settings
) -> None:
    storage = Storage.from_settings(farm_settings)
    first = synthesized(client, api_key, sessions, storage)
    source = row(sessions, first["id"])
    assert source.result is not None and source.object_key == source.result["key"]  # set by the completion
    objects_before = storage.list_keys(f"jobs/{source.tenant_id}/")
    before = len(broker_messages(farm_settings.broker_url))
    again = submit(client, api_key, dict(BODY, text="  The same line,   spoken again. "))  # same once normalised
    assert again["status"] == "succeeded" and again["id"] != first["id"]
    assert again["result"]["cached"] is True and again["attempts"] == 0
    job = row(sessions, again["id"])
    # The same object, not a copy: nothing new in storage, and both rows name it.
    assert job.result is not None and job.result["key"] == source.result["key"] == job.object_key
    assert storage.list_keys(f"jobs/{source.tenant_id}/") == objects_before
    data = storage.get(job.result["key"])
    assert hashlib.sha256(data).hexdigest() == job.result["sha256"] and data == b"RIFF stored audio"
    assert job.result["cached_from"] == first["id"]
    # Nothing was sent to a worker.
    assert len(broker_messages(farm_settings.broker_url)) == before
    # GET /audio streams it, and the presigned URL of the job's view fetches it.
    audio = client.get(f"/v1/jobs/{again['id']}/audio", headers=auth(api_key))
    assert audio.status_code == 200 and audio.is_streamed and audio.data == data
    assert audio.headers["Content-Length"] == str(len(data))
    assert audio.headers["X-Content-SHA256"] == job.result["sha256"]
    url = client.get(f"/v1/jobs/{again['id']}", headers=auth(api_key)).get_json()["result"]["url"]
    assert requests.get(url, timeout=10).content == data


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


def test_a_batch_of_an_already_made_line_stores_nothing_new(
    client: FlaskClient, api_key: str, sessions: sessionmaker[Session], farm_settings: Settings
) -> None:
    """A 50-line batch of one line already made used to copy the object 50 times; now its lines share it."""
    storage = Storage.from_settings(farm_settings)
    first = synthesized(client, api_key, sessions, storage)
    source = row(sessions, first["id"])
    before = storage.list_keys("jobs/")
    lines = [{"id": f"l{i}", "text": BODY["text"]} for i in range(50)]
    response = client.post(
        "/v1/batches", json={"lines": lines, "defaults": {"seed": 11, "qa": False}}, headers=auth(api_key)
    )
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["counts"]["succeeded"] == 50
    assert storage.list_keys("jobs/") == before
    manifest = client.get(f"/v1/batches/{response.get_json()['id']}/manifest", headers=auth(api_key)).get_json()
    assert {line["sha256"] for line in manifest["lines"]} == {source.result["sha256"]}  # type: ignore[index]
    assert requests.get(manifest["lines"][7]["url"], timeout=10).content == b"RIFF stored audio"
    with sessions() as session:
        named = session.scalars(select(Job.object_key).where(Job.batch_id == response.get_json()["id"])).all()
    assert set(named) == {source.object_key}
    archive = client.get(f"/v1/batches/{response.get_json()['id']}/archive?subtitles=none", headers=auth(api_key))
    with zipfile.ZipFile(io.BytesIO(archive.data)) as zipped:
        assert zipped.read("l49.wav") == b"RIFF stored audio"


def test_a_shared_object_that_is_gone_is_not_an_answer(
    client: FlaskClient, api_key: str, sessions: sessionmaker[Session], farm_settings: Settings
) -> None:
    storage = Storage.from_settings(farm_settings)
    first = synthesized(client, api_key, sessions, storage)
    key = row(sessions, first["id"]).object_key
    assert key is not None
    storage.delete(key)
    assert submit(client, api_key, BODY)["status"] == "queued"


def test_the_key_covers_the_tenants_thresholds_and_the_code_and_model(
    client: FlaskClient, api_key: str, sessions: sessionmaker[Session], farm_settings: Settings
) -> None:
    """A gated job's verdict depends on the tenant's thresholds: after they change, the audio checked with the
    old ones does not answer. And the key names the model by content and the code by its source."""
    storage = Storage.from_settings(farm_settings)
    gated = BODY | {"qa": True}
    first = submit(client, api_key, gated)
    with transaction(sessions) as session:
        session.execute(
            update(Job)
            .where(Job.id == first["id"])
            .values(status="succeeded", result={"key": "k", "sha256": "s", "format": "wav"}, object_key="k")
        )
    storage.put("k", b"RIFF checked")
    assert submit(client, api_key, gated)["status"] == "succeeded"
    with transaction(sessions) as session:
        session.execute(update(Tenant).where(Tenant.name == "acme").values(qa={"max_wer": 0.1}))
    assert submit(client, api_key, gated)["status"] == "queued"
    # Ungated jobs do not depend on them.
    fields = {"engine": "kokoro", "text": "x", "voice": "af_heart", "qa": None}
    key = dedup.cache_key(farm_settings, fields, None, {"max_wer": 0.1})
    assert key == dedup.cache_key(farm_settings, fields, None, {"max_wer": 0.2})
    assert key != dedup.cache_key(farm_settings, fields | {"qa": {}}, None, {"max_wer": 0.2})
    assert dedup.model_identity("kokoro", "").startswith("kokoro:") and "missing" not in dedup.model_identity(
        "kokoro", ""
    )
    assert dedup.code_identity("kokoro", False) != dedup.code_identity("cosyvoice", False)
    assert dedup.code_identity("kokoro", False) != dedup.code_identity("kokoro", True)


def test_model_identity_follows_the_content_of_a_model_dir(tmp_path: Path) -> None:
    (tmp_path / "llm.pt").write_bytes(b"weights one")
    (tmp_path / "cosyvoice3.yaml").write_text("model: a\n")
    before = dedup.model_identity("cosyvoice", str(tmp_path))
    dedup.model_identity.cache_clear()
    (tmp_path / "llm.pt").write_bytes(b"weights two")
    os.utime(tmp_path / "llm.pt", ns=(1, 1))
    assert dedup.model_identity("cosyvoice", str(tmp_path)) != before
    dedup.model_identity.cache_clear()
    assert dedup.model_identity("cosyvoice", str(tmp_path / "absent")) == f"cosyvoice:{tmp_path / 'absent'}"


def test_an_object_some_job_names_is_never_deleted(
    client: FlaskClient, api_key: str, sessions: sessionmaker[Session], farm_settings: Settings
) -> None:
    """The places that delete job objects (the finisher's earlier attempts, the QA gate's takes not kept) go
    through shared/jobs/objects.py: a key another job names (a cache hit sharing it) is kept."""
    storage = Storage.from_settings(farm_settings)
    first = synthesized(client, api_key, sessions, storage)
    again = submit(client, api_key, BODY)
    shared_key = row(sessions, again["id"]).object_key
    assert shared_key is not None and shared_key == row(sessions, first["id"]).object_key
    stray = shared_key.rsplit("/", 1)[0] + "/a9.wav"
    storage.put(stray, b"an attempt nobody names")
    deleted = objects.delete_unreferenced(sessions, storage, [shared_key, stray])
    assert deleted == [stray]
    assert storage.exists(shared_key) and not storage.exists(stray)
    # Named by the source only (its cached twin set aside): still named, still kept.
    assert objects.delete_unreferenced(sessions, storage, [shared_key], besides=[again["id"]]) == []
