"""The batches API against real PostgreSQL, Redis and SeaweedFS (no worker runs; tests finish lines themselves
through shared/jobs/state.py, the way a worker does)."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pysubs2
import pytest
import redis
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.batches import scheduler
from shared.config import Settings
from shared.models import Batch, Job
from shared.queue import make_celery
from shared.storage import Storage
from tests.support.batches import broker_messages, finish_like_a_worker, register_workers, row
from tests.support.fixtures import auth, new_api_key

# kombu's Redis list for the lowest priority step of the kokoro queue, where every batch line waits.
BATCH_LIST = "engine.kokoro\x06\x169"


def post_batch(client: FlaskClient, key: str, body: object, **headers: str) -> tuple[int, dict]:
    response = client.post("/v1/batches", json=body, headers=auth(key) | headers)
    return response.status_code, response.get_json()


def lines(n: int, prefix: str = "line") -> list[dict[str, str]]:
    return [{"id": f"{prefix}-{i:04d}", "text": f"Sentence number {i}."} for i in range(n)]


def count_jobs(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Job)) or 0)


def manifest(client: FlaskClient, key: str, batch_id: str) -> list[dict]:
    response = client.get(f"/v1/batches/{batch_id}/manifest", headers=auth(key))
    assert response.status_code == 200
    return list(response.get_json()["lines"])


def test_json_batch_creates_lines_and_sends_only_a_window(
    client: FlaskClient, api_key: str, farm_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    register_workers(sessions, 2)
    status, body = post_batch(client, api_key, {"lines": lines(300), "defaults": {"seed": 7, "format": "flac"}})
    assert status == 202, body
    assert body["lines"] == 300 and body["counts"]["queued"] == 300 and body["status"] == "queued"
    # 2 live workers x 2 lines each: the broker holds 4 of the 300 lines, at the lowest priority.
    messages = broker_messages(farm_settings.broker_url)
    assert len(messages) == farm_settings.batch_window_per_worker * 2
    assert {name for name, _ in messages} == {BATCH_LIST}
    rows = manifest(client, api_key, body["id"])
    assert [r["line_id"] for r in rows] == [f"line-{i:04d}" for i in range(300)]
    assert [job_id for _, job_id in messages] == [r["job_id"] for r in rows[:4]]
    first = row(sessions, rows[0]["job_id"])
    assert (first.seed, first.format, first.priority, first.batch_id) == (7, "flac", 0, body["id"])


def test_csv_and_jsonl_uploads(client: FlaskClient, api_key: str) -> None:
    data = "id,text,speed\nintro,Hello there.,1.2\noutro,Goodbye.,\n"
    response = client.post(
        "/v1/batches",
        data={"file": (io.BytesIO(data.encode()), "lines.csv"), "seed": "3"},
        headers=auth(api_key),
        content_type="multipart/form-data",
    )
    assert response.status_code == 202, response.get_json()
    rows = manifest(client, api_key, response.get_json()["id"])
    assert [r["line_id"] for r in rows] == ["intro", "outro"]
    jsonl = '{"id": "a", "text": "One."}\n\n{"text": "Two."}\n'
    response = client.post("/v1/batches", data=jsonl, headers=auth(api_key), content_type="application/jsonl")
    assert response.status_code == 202, response.get_json()
    # A line without an id gets its line number, zero-padded.
    assert [r["line_id"] for r in manifest(client, api_key, response.get_json()["id"])] == ["a", "2"]


def test_every_bad_line_is_listed_and_nothing_is_written(
    client: FlaskClient, api_key: str, sessions: sessionmaker[Session], farm_settings: Settings
) -> None:
    bad = [
        {"id": "ok", "text": "Fine."},
        {"id": "ok", "text": "Duplicate id."},
        {"id": "bad id!", "text": "Bad id."},
        {"id": "x1", "text": ""},
        {"id": "x2", "text": "Too fast.", "speed": 9},
        {"id": "x3", "text": "Unknown voice.", "voice": "nobody"},
        {"id": "x4", "text": "Extra field.", "priority": 9},
        {"id": "x5", "text": "x" * (farm_settings.max_text_chars + 1)},
        {"id": "x6", "text": "No such engine.", "engine": "nosuch"},
    ]
    status, body = post_batch(client, api_key, {"lines": bad})
    assert status == 422, body
    error = body["error"]
    assert error["code"] == "invalid_lines"
    found = {(p["line"], p["field"], p["code"]) for p in error["lines"]}
    assert found >= {
        (2, "id", "duplicate_line_id"),
        (3, "id", "invalid_line_id"),
        (5, "speed", "less_than_equal"),
        (6, "voice", "unknown_voice"),
        (7, "priority", "unknown_field"),
        (8, "text", "text_too_long"),
        (9, "engine", "unknown_engine"),
    }
    assert any(p["line"] == 4 and p["field"] == "text" for p in error["lines"])
    assert not any(p["line"] == 1 for p in error["lines"])
    assert count_jobs(sessions) == 0
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Batch)) == 0


def test_limits_name_the_limit(farm_settings: Settings, api_key: str) -> None:
    from producer.app import create_app

    small = create_app(farm_settings.model_copy(update={"max_batch_lines": 5, "max_batch_bytes": 2000}))
    client = small.test_client()
    status, body = post_batch(client, api_key, {"lines": lines(6)})
    assert status == 413 and body["error"]["code"] == "batch_too_large"
    assert "max_batch_lines=5" in body["error"]["message"]
    status, body = post_batch(client, api_key, {"lines": [{"text": "y" * 3000}]})
    assert status == 413 and body["error"]["code"] == "batch_body_too_large"
    assert "max_batch_bytes=2000" in body["error"]["message"]


def test_idempotency_same_body_same_batch_other_body_409(
    client: FlaskClient, api_key: str, sessions: sessionmaker[Session]
) -> None:
    body = {"lines": lines(20), "defaults": {"seed": 1}}
    status, first = post_batch(client, api_key, body, **{"Idempotency-Key": "series-1"})
    assert status == 202
    status, again = post_batch(client, api_key, body, **{"Idempotency-Key": "series-1"})
    assert status == 200 and again["id"] == first["id"]
    assert count_jobs(sessions) == 20
    changed = {"lines": lines(20), "defaults": {"seed": 2}}
    status, conflict = post_batch(client, api_key, changed, **{"Idempotency-Key": "series-1"})
    assert status == 409 and conflict["error"]["code"] == "idempotency_key_reused"
    # Another tenant's key space is its own.
    other = new_api_key(sessions, "other")
    status, theirs = post_batch(client, other, body, **{"Idempotency-Key": "series-1"})
    assert status == 202 and theirs["id"] != first["id"]


def test_tenant_isolation(client: FlaskClient, api_key: str, sessions: sessionmaker[Session]) -> None:
    _, body = post_batch(client, api_key, {"lines": lines(2)})
    other = new_api_key(sessions, "other")
    for path in ("", "/manifest", "/archive"):
        response = client.get(f"/v1/batches/{body['id']}{path}", headers=auth(other))
        assert response.status_code == 404 and response.get_json()["error"]["code"] == "batch_not_found"
    assert client.post(f"/v1/batches/{body['id']}/cancel", headers=auth(other)).status_code == 404
    assert client.get("/v1/batches", headers=auth(other)).get_json()["batches"] == []
    assert [b["id"] for b in client.get("/v1/batches", headers=auth(api_key)).get_json()["batches"]] == [body["id"]]


def test_batches_are_listed_newest_first_a_page_at_a_time(client: FlaskClient, api_key: str) -> None:
    ids = [post_batch(client, api_key, {"lines": lines(1, f"b{i}")})[1]["id"] for i in range(3)]
    page = client.get("/v1/batches?limit=2", headers=auth(api_key)).get_json()
    assert [b["id"] for b in page["batches"]] == ids[:0:-1] and page["next_cursor"] == ids[1]
    rest = client.get(f"/v1/batches?limit=2&cursor={page['next_cursor']}", headers=auth(api_key)).get_json()
    assert [b["id"] for b in rest["batches"]] == ids[:1] and rest["next_cursor"] is None
    for cursor in ("nope", "0" * 32):
        answer = client.get(f"/v1/batches?cursor={cursor}", headers=auth(api_key))
        assert answer.status_code == 404 and answer.get_json()["error"]["code"] == "bad_cursor", cursor


def test_cancel_cancels_queued_lines_at_once_and_running_ones_finish(
    client: FlaskClient, api_key: str, sessions: sessionmaker[Session], farm_settings: Settings
) -> None:
    storage = Storage.from_settings(farm_settings)
    _, body = post_batch(client, api_key, {"lines": lines(1000)})
    ids = [r["job_id"] for r in manifest(client, api_key, body["id"])]
    from shared.db import transaction
    from shared.jobs import state as jobs

    with transaction(sessions) as session:
        running = jobs.claim(session, ids[0], "test-worker", 60, 3)
    assert running is not None
    response = client.post(f"/v1/batches/{body['id']}/cancel", headers=auth(api_key))
    view = response.get_json()
    assert response.status_code == 200 and view["status"] == "canceled" and view["canceled_now"] == 999
    assert view["counts"]["canceled"] == 999 and view["counts"]["running"] == 1
    # The running line finishes normally; nothing else is ever sent.
    finish_like_a_worker_running(sessions, storage, ids[0], running[1])
    sent = scheduler.top_up(sessions, make_celery(farm_settings), 2, 60)
    assert sent == 0
    final = client.get(f"/v1/batches/{body['id']}", headers=auth(api_key)).get_json()
    assert final["counts"]["succeeded"] == 1 and final["counts"]["canceled"] == 999 and final["done"]


def finish_like_a_worker_running(
    sessions: sessionmaker[Session], storage: Storage, job_id: str, attempt: object
) -> None:
    import hashlib

    from shared.db import transaction
    from shared.jobs import state as jobs
    from worker.finisher import attempt_key

    assert isinstance(attempt, jobs.Attempt)
    job = row(sessions, job_id)
    key = attempt_key(job.tenant_id, attempt, job.format)
    storage.put(key, b"audio")
    result = {"key": key, "format": job.format, "duration_s": 0.5, "sha256": hashlib.sha256(b"audio").hexdigest()}
    with transaction(sessions) as session:
        assert jobs.complete(session, attempt, result)


def test_manifest_archive_and_rerender(
    client: FlaskClient, api_key: str, sessions: sessionmaker[Session], farm_settings: Settings
) -> None:
    storage = Storage.from_settings(farm_settings)
    _, body = post_batch(client, api_key, {"lines": lines(3, "ep1")})
    batch_id = body["id"]
    rows = manifest(client, api_key, batch_id)
    results = {r["line_id"]: finish_like_a_worker(sessions, storage, r["job_id"], duration_s=2.0) for r in rows[:2]}
    view = client.get(f"/v1/batches/{batch_id}", headers=auth(api_key)).get_json()
    assert view["counts"]["succeeded"] == 2 and view["audio_seconds"] == 4.0 and view["progress"] == round(2 / 3, 4)
    csv_text = client.get(f"/v1/batches/{batch_id}/manifest?format=csv", headers=auth(api_key)).get_data(as_text=True)
    parsed = list(csv.DictReader(io.StringIO(csv_text)))
    assert [p["status"] for p in parsed] == ["succeeded", "succeeded", "queued"]
    assert parsed[0]["sha256"] == results["ep1-0000"]["sha256"] and parsed[0]["url"].startswith("http")

    response = client.get(f"/v1/batches/{batch_id}/archive", headers=auth(api_key))
    assert response.status_code == 200 and response.is_streamed
    archive = zipfile.ZipFile(io.BytesIO(response.get_data()))
    assert sorted(archive.namelist()) == [
        "batch.srt", "ep1-0000.srt", "ep1-0000.wav", "ep1-0001.srt", "ep1-0001.wav", "manifest.csv",
    ]  # fmt: skip
    assert archive.read("ep1-0001.wav") == storage.get(results["ep1-0001"]["key"])
    # Each line's subtitles say its script; the whole-batch file plays the lines back to back.
    texts = {r["line_id"]: row(sessions, r["job_id"]).text for r in rows}
    line_subs = pysubs2.SSAFile.from_string(archive.read("ep1-0001.srt").decode(), format_="srt")
    assert " ".join(e.plaintext.replace("\n", " ") for e in line_subs) == texts["ep1-0001"]
    whole = pysubs2.SSAFile.from_string(archive.read("batch.srt").decode(), format_="srt")
    assert " ".join(e.plaintext.replace("\n", " ") for e in whole) == f"{texts['ep1-0000']} {texts['ep1-0001']}"
    assert whole[-1].start >= 2000 and whole[-1].end <= 4000
    vtt = client.get(f"/v1/batches/{batch_id}/archive?subtitles=vtt", headers=auth(api_key))
    assert "ep1-0000.vtt" in zipfile.ZipFile(io.BytesIO(vtt.get_data())).namelist()
    bare = client.get(f"/v1/batches/{batch_id}/archive?subtitles=none", headers=auth(api_key))
    assert sorted(zipfile.ZipFile(io.BytesIO(bare.get_data())).namelist()) == [
        "ep1-0000.wav", "ep1-0001.wav", "manifest.csv",
    ]  # fmt: skip

    # One subtitle line changed: a new take of that line; the manifest and archive follow it.
    response = client.post(
        f"/v1/batches/{batch_id}/lines/ep1-0001", json={"text": "A changed line."}, headers=auth(api_key)
    )
    assert response.status_code == 202, response.get_json()
    take = response.get_json()
    assert take["batch"] == {"id": batch_id, "line_id": "ep1-0001", "take": 2} and take["status"] == "queued"
    rows = manifest(client, api_key, batch_id)
    assert [r["take"] for r in rows] == [1, 2, 1] and rows[1]["job_id"] == take["id"]
    assert row(sessions, take["id"]).text == "A changed line."
    new = finish_like_a_worker(sessions, storage, take["id"], data=b"new take")
    archive = zipfile.ZipFile(
        io.BytesIO(client.get(f"/v1/batches/{batch_id}/archive", headers=auth(api_key)).get_data())
    )
    assert archive.read("ep1-0001.wav") == b"new take"
    assert new["sha256"] in archive.read("manifest.csv").decode()
    missing = client.post(f"/v1/batches/{batch_id}/lines/nope", json={"text": "x"}, headers=auth(api_key))
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "line_not_found"


def test_a_rerender_keeps_the_lines_own_overrides_and_the_changed_fields_win(
    client: FlaskClient, api_key: str, sessions: sessionmaker[Session]
) -> None:
    body = {
        "lines": [
            {"id": "slot", "text": "Fit this one to its slot.", "loudness": -16, "target_duration_s": 2.5},
            {"id": "plain", "text": "This one takes the defaults.", "speed": 1.1},
        ],
        "defaults": {"loudness": -20, "trim_silence_s": 0.1, "seed": 3},
    }
    status, batch = post_batch(client, api_key, body)
    assert status == 202, batch
    first = {r["line_id"]: row(sessions, r["job_id"]) for r in manifest(client, api_key, batch["id"])}
    assert first["slot"].options == {"loudness_lufs": -16, "target_duration_s": 2.5, "trim_pad_s": 0.1}
    assert first["plain"].options == {"loudness_lufs": -20, "trim_pad_s": 0.1}

    def rerender(line_id: str, changes: dict[str, Any]) -> Any:
        response = client.post(f"/v1/batches/{batch['id']}/lines/{line_id}", json=changes, headers=auth(api_key))
        assert response.status_code == 202, response.get_json()
        return row(sessions, response.get_json()["id"])

    # A new text only: the line's own loudness and slot stay, and so do the defaults it was made with.
    take = rerender("slot", {"text": "Fit this changed one to its slot."})
    assert take.options == first["slot"].options and take.seed == 3 and take.take == 2
    # It keeps what was asked, not what was resolved: a later new text still has its language detected afresh.
    assert take.request is not None and take.request["loudness"] == -16 and take.request["seed"] == 3
    assert not {"language", "voice", "engine"} & set(take.request)
    assert take.text == "Fit this changed one to its slot."
    # A changed field wins; the rest of the previous take's request is kept.
    take = rerender("slot", {"loudness": -14})
    assert take.options == {"loudness_lufs": -14, "target_duration_s": 2.5, "trim_pad_s": 0.1}
    assert take.text == "Fit this changed one to its slot." and take.take == 3
    take = rerender("slot", {"target_duration_s": 3.0, "loudness": {"target": -18, "true_peak": -2.0}})
    assert take.options == {"loudness_lufs": -18, "true_peak_db": -2.0, "target_duration_s": 3.0, "trim_pad_s": 0.1}
    # Null drops a field back to the farm's default (no fit to a slot).
    take = rerender("slot", {"target_duration_s": None})
    assert take.options == {"loudness_lufs": -18, "true_peak_db": -2.0, "trim_pad_s": 0.1}
    assert take.request is not None and "target_duration_s" not in take.request
    take = rerender("plain", {"text": "This one changed."})
    assert take.options == first["plain"].options and take.speed == 1.1 and take.voice == first["plain"].voice
    assert [(r["line_id"], r["take"]) for r in manifest(client, api_key, batch["id"])] == [("slot", 5), ("plain", 2)]


def test_two_tenants_share_the_broker_in_turn(
    client: FlaskClient, api_key: str, sessions: sessionmaker[Session], farm_settings: Settings
) -> None:
    register_workers(sessions, 1)
    _, first = post_batch(client, api_key, {"lines": lines(500, "a")})
    other = new_api_key(sessions, "other")
    _, second = post_batch(client, other, {"lines": lines(500, "b")})
    celery = make_celery(farm_settings)
    # Each tenant holds its own window, whoever came first.
    tenants = [job_id for _, job_id in broker_messages(farm_settings.broker_url)]
    assert len(tenants) == 4
    owners = [row(sessions, job_id).batch_id for job_id in tenants]
    assert owners.count(first["id"]) == 2 and owners.count(second["id"]) == 2
    # A worker takes the head message and finishes it; the window refills behind the other tenant's lines, so the
    # lines workers take alternate between the tenants.
    storage = Storage.from_settings(farm_settings)
    broker = redis.Redis.from_url(farm_settings.broker_url)
    taken = []
    for _ in range(20):
        raw = broker.rpop(BATCH_LIST)
        assert raw is not None
        job_id = json.loads(raw)["headers"]["argsrepr"].strip("[]'")
        finish_like_a_worker(sessions, storage, job_id)
        taken.append(row(sessions, job_id).batch_id)
        assert scheduler.top_up(sessions, celery, 2, 60) == 1
    broker.close()
    # Equal shares, and never more than one window (2 lines) of one tenant in a row.
    assert taken.count(first["id"]) == taken.count(second["id"]) == 10, taken
    assert all(len(set(taken[i : i + 3])) == 2 for i in range(len(taken) - 2)), taken


def test_reconciler_leaves_unsent_batch_lines_to_the_scheduler(
    client: FlaskClient, api_key: str, sessions: sessionmaker[Session], farm_settings: Settings
) -> None:
    from shared.jobs import state as jobs

    register_workers(sessions, 1)
    _, body = post_batch(client, api_key, {"lines": lines(50)})
    with sessions() as session:
        assert jobs.unsent(session, -10, 500) == []
        page = jobs.queued_page(session, None, 500)
    # After a broker loss only the window (the lines sent) is sent again, not the backlog.
    assert len(page) == 2 and all(job.batch_id == body["id"] for job in page)


def test_single_jobs_are_not_limited_by_batch_backlog(farm_settings: Settings, api_key: str) -> None:
    from producer.app import create_app

    client = create_app(farm_settings.model_copy(update={"max_queued_per_tenant": 5})).test_client()
    status, _ = post_batch(client, api_key, {"lines": lines(50)})
    assert status == 202
    response = client.post("/v1/jobs", json={"text": "Interactive."}, headers=auth(api_key))
    assert response.status_code == 202


@pytest.mark.parametrize("path", ["", "/manifest", "/archive"])
def test_unknown_batch_is_404(client: FlaskClient, api_key: str, path: str) -> None:
    response = client.get(f"/v1/batches/{'0' * 32}{path}", headers=auth(api_key))
    assert response.status_code == 404


def test_json_body_shape_errors(client: FlaskClient, api_key: str) -> None:
    for body in ({"lines": "nope"}, [], {"lines": [], "x": 1}, {"lines": []}):
        response = client.post(
            "/v1/batches", data=json.dumps(body), headers=auth(api_key), content_type="application/json"
        )
        assert response.status_code == 400, (body, response.get_json())


def test_batches_on_sqlite_and_postgresql(
    database_url: str, fresh_broker_url: str, module_s3_settings: Any, tmp_path: Path
) -> None:
    """The embedded mode's SQLite too: create, idempotent replay, window sent, cancel."""
    from producer.app import create_app
    from shared.db import make_engine, make_session_factory
    from tests.support.fixtures import make_settings

    settings = make_settings(database_url, fresh_broker_url, module_s3_settings, tmp_path / "data")
    sessions = make_session_factory(make_engine(settings.resolved_database_url()))
    key = new_api_key(sessions, "acme")
    client = create_app(settings).test_client()
    status, body = post_batch(client, key, {"lines": lines(30)}, **{"Idempotency-Key": "k"})
    assert status == 202
    assert post_batch(client, key, {"lines": lines(30)}, **{"Idempotency-Key": "k"})[0] == 200
    assert len(broker_messages(fresh_broker_url)) == settings.batch_window_per_worker  # no live worker: one assumed
    view = client.post(f"/v1/batches/{body['id']}/cancel", headers=auth(key)).get_json()
    assert view["counts"]["canceled"] == 30 and view["status"] == "canceled"


def test_a_10000_line_batch(
    client: FlaskClient, api_key: str, sessions: sessionmaker[Session], farm_settings: Settings
) -> None:
    import time

    register_workers(sessions, 1)
    started = time.monotonic()
    status, body = post_batch(client, api_key, {"lines": lines(10_000), "defaults": {"seed": 5}})
    took = time.monotonic() - started
    assert status == 202 and body["lines"] == 10_000, body
    print(f"10,000-line batch accepted in {took:.1f}s")
    assert count_jobs(sessions) == 10_000
    # Redis holds the window, not the batch.
    assert len(broker_messages(farm_settings.broker_url)) == 2
    assert client.get(f"/v1/batches/{body['id']}", headers=auth(api_key)).get_json()["counts"]["queued"] == 10_000
    status, over = post_batch(client, api_key, {"lines": lines(10_001)})
    assert status == 413 and "max_batch_lines=10000" in over["error"]["message"]
