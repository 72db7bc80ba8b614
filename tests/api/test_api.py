"""The HTTP API against real PostgreSQL, Redis and SeaweedFS (no worker: jobs stay queued)."""

from __future__ import annotations

import json

import pytest
import redis
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared import tenants
from shared.config import Settings
from shared.db import transaction
from shared.engines import catalogue
from shared.models import Job
from tests.support.fixtures import auth, new_api_key


def queued_messages(broker_url: str) -> list[dict[str, object]]:
    """Messages waiting in the kokoro queue (kombu keeps one Redis list per priority step)."""
    client = redis.Redis.from_url(broker_url)
    out = []
    for key in client.keys("engine.kokoro*"):
        for raw in client.lrange(key, 0, -1):
            out.append(json.loads(raw))
    return out


def submit(client: FlaskClient, key: str, body: object, **headers: str) -> tuple[int, dict]:
    response = client.post("/v1/jobs", json=body, headers=auth(key) | headers)
    return response.status_code, response.get_json()


def test_submit_commits_then_enqueues(client: FlaskClient, api_key: str, farm_settings: Settings) -> None:
    status, body = submit(client, api_key, {"text": "Hello from the farm."})
    assert status == 202
    assert body["status"] == "queued" and body["progress"] == 0 and body["attempts"] == 0
    assert body["language"] == "en" and body["voice"] == "jf_alpha" and body["format"] == "wav"
    messages = queued_messages(farm_settings.broker_url)
    assert len(messages) == 1
    assert messages[0]["headers"]["task"] == "voicefarm.synthesize"  # type: ignore[index]
    assert messages[0]["headers"]["argsrepr"] == repr([body["id"]])  # type: ignore[index]


@pytest.mark.parametrize(
    ("text", "language"), [("今天天气很好。", "zh"), ("こんにちは。", "ja"), ("Good morning.", "en")]
)
def test_language_is_detected_when_absent(client: FlaskClient, api_key: str, text: str, language: str) -> None:
    status, body = submit(client, api_key, {"text": text})
    assert status == 202 and body["language"] == language


def test_get_and_list(client: FlaskClient, api_key: str) -> None:
    ids = [submit(client, api_key, {"text": f"line {i}", "priority": 3})[1]["id"] for i in range(3)]
    response = client.get(f"/v1/jobs/{ids[0]}", headers=auth(api_key))
    assert response.status_code == 200 and response.get_json()["id"] == ids[0]
    page = client.get("/v1/jobs?limit=2", headers=auth(api_key)).get_json()
    assert [j["id"] for j in page["jobs"]] == ids[:0:-1]
    rest = client.get(f"/v1/jobs?limit=2&cursor={page['next_cursor']}", headers=auth(api_key)).get_json()
    assert [j["id"] for j in rest["jobs"]] == ids[:1] and rest["next_cursor"] is None
    queued = client.get("/v1/jobs?status=queued", headers=auth(api_key)).get_json()
    assert len(queued["jobs"]) == 3


def test_idempotency_key(client: FlaskClient, api_key: str, farm_settings: Settings) -> None:
    first = submit(client, api_key, {"text": "once"}, **{"Idempotency-Key": "abc"})
    again = submit(client, api_key, {"text": "once"}, **{"Idempotency-Key": "abc"})
    assert first[0] == 202 and again[0] == 200 and first[1]["id"] == again[1]["id"]
    assert len(queued_messages(farm_settings.broker_url)) == 1
    clash = submit(client, api_key, {"text": "different"}, **{"Idempotency-Key": "abc"})
    assert clash[0] == 409 and clash[1]["error"]["code"] == "idempotency_key_reused"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, "invalid_request"),
        ({"text": ""}, "invalid_request"),
        ({"text": "   "}, "invalid_request"),
        ({"text": 5}, "invalid_request"),
        ({"text": "hi", "voice": "nobody"}, "unknown_voice"),
        ({"text": "hi", "format": "aiff"}, "invalid_request"),
        ({"text": "hi", "language": "fr"}, "unsupported_language"),
        ({"text": "hi", "speed": 9}, "invalid_request"),
        ({"text": "hi", "sample_rate": 96000}, "invalid_request"),
        ({"text": "hi", "format": "mp3", "sample_rate": 12345}, "invalid_request"),
        ({"text": "hi", "mode": "instruct"}, "invalid_request"),
        ({"text": "hi", "surprise": 1}, "invalid_request"),
        ({"text": "x" * 5001}, "text_too_long"),
        ([1, 2], "invalid_json"),
    ],
)
def test_bad_input_is_rejected_and_nothing_is_written(
    client: FlaskClient, api_key: str, sessions: sessionmaker[Session], body: object, code: str
) -> None:
    status, answer = submit(client, api_key, body)
    assert 400 <= status < 500
    assert answer["error"]["code"] == code and answer["error"]["message"]
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0


def test_malformed_json(client: FlaskClient, api_key: str) -> None:
    response = client.post("/v1/jobs", data="{nope", headers=auth(api_key) | {"Content-Type": "application/json"})
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "invalid_json"


def test_auth(client: FlaskClient, api_key: str, sessions: sessionmaker[Session]) -> None:
    assert client.get("/v1/jobs").get_json()["error"]["code"] == "missing_api_key"
    response = client.get("/v1/jobs", headers=auth("vf_wrong"))
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "invalid_api_key"
    job_id = submit(client, api_key, {"text": "mine"})[1]["id"]
    other = new_api_key(sessions, "other-tenant")
    assert client.get(f"/v1/jobs/{job_id}", headers=auth(other)).status_code == 404
    assert client.get(f"/v1/jobs/{job_id}/audio", headers=auth(other)).status_code == 404
    with transaction(sessions) as session:
        (row, _tenant) = tenants.list_keys(session)[0]
        tenants.revoke_key(session, row.id)
    assert client.get("/v1/jobs", headers=auth(api_key)).status_code == 401


def test_keys_are_stored_hashed(api_key: str, sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        (row, _tenant) = tenants.list_keys(session)[0]
        assert api_key not in (row.key_hash, row.label) and len(row.key_hash) == 64


def test_audio_of_an_unfinished_job_is_a_conflict(client: FlaskClient, api_key: str) -> None:
    job_id = submit(client, api_key, {"text": "wait"})[1]["id"]
    response = client.get(f"/v1/jobs/{job_id}/audio", headers=auth(api_key))
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "not_ready"


def test_health_and_readiness_without_a_worker(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    response = client.get("/readyz")
    body = response.get_json()
    assert response.status_code == 503
    assert body["checks"]["database"] == "ok" and body["checks"]["broker"] == "ok"
    assert body["checks"]["storage"] == "ok" and body["checks"]["workers"].startswith("error")


def test_unknown_route_is_json(client: FlaskClient) -> None:
    response = client.get("/v1/nothing")
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"


def test_web_ui(client: FlaskClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and b"voicefarm" in page.data and b"jf_alpha" in page.data


def test_instruction_catalogue(client: FlaskClient, api_key: str) -> None:
    # Engines with live workers are listed, and the default one always (tests/worker/test_fleet.py has a mixed fleet).
    engines = client.get("/v1/instructions", headers=auth(api_key)).get_json()["engines"]
    assert {i["id"] for i in engines["kokoro"]["honoured"]} >= {"slow", "fast"}
    cosy = catalogue("cosyvoice").instructions
    dialects = [i for i in cosy if i["kind"] == "dialect"]
    assert len(dialects) == 17 and any("四川" in i["text"] for i in dialects)
    assert {i["kind"] for i in cosy} >= {"dialect", "emotion", "speed", "volume", "style"}


def test_workers_listing(client: FlaskClient, api_key: str, sessions: sessionmaker[Session]) -> None:
    from shared.models import Worker

    assert client.get("/v1/workers", headers=auth(api_key)).get_json() == {"workers": []}
    with transaction(sessions) as session:
        session.add(Worker(name="kokoro-cpu0@h", engine="kokoro", device="cpu", jobs_done=4,
                           audio_seconds=10.0, compute_seconds=5.0))  # fmt: skip
    (worker,) = client.get("/v1/workers", headers=auth(api_key)).get_json()["workers"]
    assert worker["name"] == "kokoro-cpu0@h" and worker["jobs_done"] == 4 and worker["mean_rtf"] == 0.5


def test_time_limits_travel_with_the_message_and_grow_with_the_text(
    client: FlaskClient, api_key: str, farm_settings: Settings
) -> None:
    submit(client, api_key, {"text": "Short."})
    submit(client, api_key, {"text": "A much longer text. " * 100})
    limits = sorted(tuple(m["headers"]["timelimit"]) for m in queued_messages(farm_settings.broker_url))  # type: ignore[index]
    (short_hard, short_soft), (long_hard, long_soft) = limits
    assert short_soft < short_hard and long_soft < long_hard
    long_chars = len(("A much longer text. " * 100).strip())
    assert long_soft - short_soft == pytest.approx(2.0 * (long_chars - len("Short.")))


def test_cancel(client: FlaskClient, api_key: str, sessions: sessionmaker[Session]) -> None:
    job_id = submit(client, api_key, {"text": "never mind"})[1]["id"]
    response = client.post(f"/v1/jobs/{job_id}/cancel", headers=auth(api_key))
    assert response.status_code == 200 and response.get_json()["status"] == "canceled"
    assert response.get_json()["finished_at"]
    again = client.post(f"/v1/jobs/{job_id}/cancel", headers=auth(api_key))
    assert again.status_code == 200 and again.get_json()["status"] == "canceled"
    other = new_api_key(sessions, "other")
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth(other)).status_code == 404
    from shared.jobs import state as job_state

    with transaction(sessions) as session:
        # A worker that picks the message up afterwards finds nothing to do.
        assert job_state.claim(session, job_id, "w", 60, 3) is None
    done = submit(client, api_key, {"text": "finished"})[1]["id"]
    with transaction(sessions) as session:
        claimed = job_state.claim(session, done, "w", 60, 3)
        assert claimed is not None
        job_state.complete(session, claimed[1], {"key": "k", "sha256": "x"})
    refused = client.post(f"/v1/jobs/{done}/cancel", headers=auth(api_key))
    assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "already_finished"
