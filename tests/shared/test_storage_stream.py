"""Objects stream from storage chunk by chunk (shared/storage.py `Storage.open`), and GET /v1/jobs/{id}/audio
relays them so: the API never holds a whole object in memory. Real SeaweedFS."""

from __future__ import annotations

import hashlib
import os

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.errors import StorageRejected
from shared.storage import Storage
from tests.support.batches import finish_like_a_worker
from tests.support.fixtures import auth


def test_an_object_streams_in_chunks(farm_settings: Settings) -> None:
    storage = Storage.from_settings(farm_settings)
    data = os.urandom(3 * 1024 * 1024 + 17)
    storage.put("stream/big.bin", data)
    stored = storage.open("stream/big.bin", chunk_bytes=256 * 1024)
    assert stored.length == len(data)
    chunks = list(stored)
    assert len(chunks) >= 12 and max(len(c) for c in chunks) <= 256 * 1024
    assert b"".join(chunks) == data
    with pytest.raises(StorageRejected):
        storage.open("stream/absent.bin")


def test_job_audio_is_streamed_not_loaded(
    client: FlaskClient, api_key: str, sessions: sessionmaker[Session], farm_settings: Settings
) -> None:
    storage = Storage.from_settings(farm_settings)
    job = client.post("/v1/jobs", json={"text": "A long take."}, headers=auth(api_key)).get_json()
    data = os.urandom(2 * 1024 * 1024)
    finish_like_a_worker(sessions, storage, job["id"], data=data)
    response = client.get(f"/v1/jobs/{job['id']}/audio", headers=auth(api_key), buffered=False)
    assert response.status_code == 200 and response.is_streamed
    assert response.headers["Content-Length"] == str(len(data))
    chunks = list(response.response)
    assert len(chunks) > 1 and b"".join(chunks) == data
    assert response.headers["X-Content-SHA256"] == hashlib.sha256(data).hexdigest()
    response.close()
    redirect = client.get(f"/v1/jobs/{job['id']}/audio?redirect=1", headers=auth(api_key))
    assert redirect.status_code == 302 and "X-Amz-Signature" in redirect.headers["Location"]
