"""Idempotency keys over HTTP, on SQLite and PostgreSQL: many concurrent submissions with one key make one job
and every one of them is answered 2xx with its id; the key on a request that differs in any field is a 409."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from producer.app import create_app
from shared.config import Settings
from shared.db import make_engine, make_session_factory
from shared.models import Job
from tests.api.test_api import queued_messages
from tests.api.test_upload_bombs import running_api
from tests.conftest import S3Settings
from tests.support.fixtures import auth, make_settings, new_api_key

THREADS = 16
BODY: dict[str, Any] = {"text": "Say this exactly once.", "voice": "jf_alpha", "language": "en"}


@pytest.fixture
def both_settings(
    database_url: str, fresh_broker_url: str, module_s3_settings: S3Settings, tmp_data_dir: Path
) -> Settings:
    """Settings on a migrated, empty SQLite file and then PostgreSQL (each test here runs on both)."""
    return make_settings(database_url, fresh_broker_url, module_s3_settings, tmp_data_dir)


@pytest.fixture
def db(both_settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(both_settings.resolved_database_url())
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def api(both_settings: Settings) -> Flask:
    return create_app(both_settings)


@pytest.fixture
def key(db: sessionmaker[Session]) -> str:
    return new_api_key(db, "acme")


def job_count(db: sessionmaker[Session]) -> int:
    with db() as session:
        return session.scalar(select(func.count()).select_from(Job)) or 0


def post_together(api: Flask, key: str, bodies: list[dict[str, Any]], idempotency_key: str) -> list[tuple[int, Any]]:
    """Send every body at once from its own thread (and test client), released together by a barrier."""
    barrier = threading.Barrier(len(bodies))
    answers: list[tuple[int, Any]] = [(0, None)] * len(bodies)

    def send(i: int) -> None:
        client = api.test_client()
        barrier.wait()
        response = client.post("/v1/jobs", json=bodies[i], headers=auth(key) | {"Idempotency-Key": idempotency_key})
        answers[i] = (response.status_code, response.get_json())

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return answers


def test_concurrent_same_key_same_body_make_one_job_and_all_succeed(
    api: Flask, key: str, db: sessionmaker[Session], both_settings: Settings
) -> None:
    answers = post_together(api, key, [dict(BODY) for _ in range(THREADS)], "same-key")
    statuses = Counter(status for status, _ in answers)
    assert statuses == {202: 1, 200: THREADS - 1}, answers
    assert len({body["id"] for _, body in answers}) == 1
    assert job_count(db) == 1
    assert len(queued_messages(both_settings.broker_url)) == 1  # enqueued once, by the request that created it


def test_concurrent_same_key_different_bodies_one_wins_the_rest_conflict(
    api: Flask, key: str, db: sessionmaker[Session]
) -> None:
    bodies = [BODY | {"text": f"Variant number {i}."} for i in range(THREADS)]
    answers = post_together(api, key, bodies, "contested")
    statuses = Counter(status for status, _ in answers)
    assert statuses == {202: 1, 409: THREADS - 1}, answers
    assert {body["error"]["code"] for status, body in answers if status == 409} == {"idempotency_key_reused"}
    assert job_count(db) == 1


# Each differs from BODY in one field only; the key is refused for every one of them.
CHANGES: list[tuple[str, dict[str, Any]]] = [
    ("text", {"text": "Say this exactly twice."}),
    ("voice", {"voice": "jm_kumo"}),
    ("language-omitted", {"language": None}),
    ("mode", {"mode": "instruct", "instruct": "speak slowly"}),
    ("speed", {"speed": 1.25}),
    ("format", {"format": "flac"}),
    ("sample-rate", {"sample_rate": 16000}),
    ("seed", {"seed": 7}),
    ("priority", {"priority": 3}),  # above 5 is refused before: an entitlement (tests/api/test_admission.py)
    ("webhook", {"webhook_url": "https://93.184.216.34/hook"}),
]


@pytest.mark.parametrize("change", [c[1] for c in CHANGES], ids=[c[0] for c in CHANGES])
def test_same_key_with_any_field_different_is_a_conflict(
    api: Flask, key: str, db: sessionmaker[Session], change: dict[str, Any]
) -> None:
    client = api.test_client()
    headers = auth(key) | {"Idempotency-Key": "k1"}
    first = client.post("/v1/jobs", json=BODY, headers=headers)
    assert first.status_code == 202, first.get_json()
    other = {k: v for k, v in (BODY | change).items() if v is not None}
    clash = client.post("/v1/jobs", json=other, headers=headers)
    assert (clash.status_code, clash.get_json()["error"]["code"]) == (409, "idempotency_key_reused")
    # The same request again is still answered with the job, and the stored hash is the canonical request's.
    again = client.post("/v1/jobs", json=BODY, headers=headers)
    assert again.status_code == 200 and again.get_json()["id"] == first.get_json()["id"]
    with db() as session:
        hashes = session.scalars(select(Job.request_hash)).all()
    assert len(hashes) == 1 and hashes[0] is not None and len(hashes[0]) == 64


def test_the_canonical_request_ignores_what_validation_normalises(
    api: Flask, key: str, db: sessionmaker[Session]
) -> None:
    """Key order, spacing the schema strips and defaults spelled out are the same request."""
    client = api.test_client()
    headers = auth(key) | {"Idempotency-Key": "k2"}
    first = client.post("/v1/jobs", json=BODY, headers=headers)
    same = dict(reversed(list((BODY | {"text": "  " + BODY["text"] + " ", "speed": 1, "format": "wav"}).items())))
    again = client.post("/v1/jobs", json=same, headers=headers)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.get_json()["id"] == first.get_json()["id"] and job_count(db) == 1


def test_keys_belong_to_a_tenant(api: Flask, key: str, db: sessionmaker[Session]) -> None:
    client = api.test_client()
    other = new_api_key(db, "globex")
    mine = client.post("/v1/jobs", json=BODY, headers=auth(key) | {"Idempotency-Key": "shared"})
    theirs = client.post(
        "/v1/jobs", json=BODY | {"text": "Theirs."}, headers=auth(other) | {"Idempotency-Key": "shared"}
    )
    assert (mine.status_code, theirs.status_code) == (202, 202)
    assert mine.get_json()["id"] != theirs.get_json()["id"]


def test_concurrent_same_key_over_http_to_several_api_processes(
    farm_settings: Settings, api_key: str, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """The same race across gunicorn processes (2 workers x 4 threads) on PostgreSQL: one job, all answered 2xx."""
    with running_api(farm_settings, tmp_path / "api.log", workers=2) as (url, _pid):
        barrier = threading.Barrier(THREADS)
        answers: list[tuple[int, Any]] = [(0, None)] * THREADS

        def send(i: int) -> None:
            with requests.Session() as http:
                barrier.wait()
                response = http.post(
                    f"{url}/v1/jobs", json=BODY, headers=auth(api_key) | {"Idempotency-Key": "over-http"}, timeout=60
                )
                answers[i] = (response.status_code, response.json())

        threads = [threading.Thread(target=send, args=(i,)) for i in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
    assert Counter(status for status, _ in answers) == {202: 1, 200: THREADS - 1}, answers
    assert len({body["id"] for _, body in answers}) == 1
    assert job_count(sessions) == 1
