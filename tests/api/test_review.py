"""Review of the lines the QA gate flags, through the API against real PostgreSQL, Redis and SeaweedFS: the queue,
decisions, the manifest's `review` column, the batch's counts, a re-render that clears a decision, the errors,
tenant isolation, and the `batch.reviewed` event. No worker runs: the tests take lines through the gate the way
the synthesis and QA workers do, through shared/jobs/state.py."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from shared import tenants
from shared.batches import review
from shared.config import Settings
from shared.db import make_engine, make_session_factory, transaction
from shared.jobs import state as jobs
from shared.models import Batch, Job
from shared.storage import Storage
from shared.webhooks import deliveries
from tests.farm.test_webhooks import Receiver, ctx_for
from tests.support.batches import finish_like_a_worker, row
from tests.support.fixtures import auth, new_api_key
from worker.finisher import attempt_key
from worker.webhooks.deliver import deliver_batch_webhook

CHECKS_FAILED = {
    "wer": {"value": 0.6667, "threshold": 0.35, "bound": "max", "pass": False},
    "tail_db": {"value": -31.2, "threshold": -20.0, "bound": "max", "pass": True},
}
CHECKS_PASSED = {"wer": {"value": 0.0, "threshold": 0.35, "bound": "max", "pass": True}}


def gate_like_the_qa_pool(
    sessions: sessionmaker[Session], storage: Storage, job_id: str, *, passed: bool, heard: str, takes: int = 2
) -> dict[str, Any]:
    """Make a take, hand it to the gate and settle it as the QA pool does (worker/qa/step.py `_settle`): passed, or
    needs_review after `takes` takes, with the kept take's checks and transcript in `result.qa`."""
    with transaction(sessions) as session:
        claimed = jobs.claim(session, job_id, "test-worker", 60, 3)
        assert claimed is not None, job_id
        job, attempt = claimed
        tenant_id, fmt, text = job.tenant_id, job.format, job.text
    data = f"take of {job_id}".encode()
    key = attempt_key(tenant_id, attempt, fmt)
    storage.put(key, data, fmt)
    result = {
        "key": key,
        "format": fmt,
        "sample_rate": 24000,
        "duration_s": 1.25,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "engine": "kokoro",
        "normalized_text": text.lower(),
    }
    checks = CHECKS_PASSED if passed else CHECKS_FAILED
    records = [
        {"take": n, "passed": passed and n == takes, "seed": n, "speed": 1.0, "checks": checks, "transcript": heard}
        for n in range(1, takes + 1)
    ]
    summary = {
        "passed": passed,
        "needs_review": not passed,
        "takes": takes,
        "kept_take": takes,
        "checks": checks,
        "transcript": heard,
        "check_s": 0.5,
        "history": [{k: t[k] for k in ("take", "passed", "seed", "speed")} for t in records],
    }
    with transaction(sessions) as session:
        assert jobs.to_checking(session, attempt, result, 60)
        assert jobs.hold_check(session, job_id, attempt.number, "qa-test", 60)
        assert jobs.pass_check(session, job_id, attempt.number, "qa-test", result | {"qa": summary}, records)
    return result


@pytest.fixture
def app(farm_settings: Settings) -> Flask:
    from producer.app import create_app

    return create_app(farm_settings.model_copy(update={"webhook_allow_private": True}))


@pytest.fixture
def receiver() -> Any:
    opened = Receiver()
    yield opened
    opened.close()


def get(client: FlaskClient, key: str, path: str) -> Any:
    response = client.get(path, headers=auth(key))
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def decide(client: FlaskClient, key: str, batch_id: str, line_id: str, body: Any) -> Any:
    return client.post(f"/v1/batches/{batch_id}/lines/{line_id}/review", json=body, headers=auth(key))


def batch_row(sessions: sessionmaker[Session], batch_id: str) -> Batch:
    with sessions() as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None
        return batch


def error_code(response: Any) -> tuple[int, str]:
    return response.status_code, response.get_json()["error"]["code"]


def test_flagged_lines_are_queued_decided_counted_and_cleared_by_a_rerender(
    client: FlaskClient, farm_settings: Settings, sessions: sessionmaker[Session], receiver: Receiver
) -> None:
    with transaction(sessions) as session:
        key_row, key = tenants.create_key(session, "studio")
        key_id, label, secret = key_row.id, key_row.label, key_row.webhook_secret
    storage = Storage.from_settings(farm_settings)
    body = {
        "lines": [
            {"id": "good", "text": "This line passes the gate."},
            {"id": "mumble", "text": "The lighthouse keeper waved twice."},
            {"id": "cut", "text": "Never open the blue door."},
            {"id": "plain", "text": "This one skips the gate.", "qa": False},
        ],
        "webhook_url": receiver.url,
        "name": "episode 3",
    }
    response = client.post("/v1/batches", json=body, headers=auth(key))
    assert response.status_code == 202, response.get_json()
    batch_id = response.get_json()["id"]
    jobs_by_line = {r["line_id"]: r["job_id"] for r in get(client, key, f"/v1/batches/{batch_id}/manifest")["lines"]}

    # Nothing is flagged while the lines are open.
    assert get(client, key, f"/v1/batches/{batch_id}/review")["lines"] == []
    assert error_code(decide(client, key, batch_id, "mumble", {"decision": "approved"})) == (409, "review_not_needed")

    gate_like_the_qa_pool(sessions, storage, jobs_by_line["good"], passed=True, heard="This line passes the gate.")
    gate_like_the_qa_pool(sessions, storage, jobs_by_line["mumble"], passed=False, heard="the light house keeper")
    cut = gate_like_the_qa_pool(sessions, storage, jobs_by_line["cut"], passed=False, heard="Never open the")
    finish_like_a_worker(sessions, storage, jobs_by_line["plain"])
    view = get(client, key, f"/v1/batches/{batch_id}")
    assert view["done"] and view["pending_reviews"] == 2
    assert view["reviews"] == {"flagged": 2, "pending": 2, "approved": 0, "rejected": 0}
    assert batch_row(sessions, batch_id).finished_event == "batch.completed"

    # The queue: the two flagged lines in file order, with what a reviewer needs.
    queue = get(client, key, f"/v1/batches/{batch_id}/review")
    assert queue["name"] == "episode 3" and queue["reviews"]["pending"] == 2
    assert [line["line_id"] for line in queue["lines"]] == ["mumble", "cut"]
    line = queue["lines"][1]
    assert line["text"] == "Never open the blue door." and line["normalized_text"] == "never open the blue door."
    assert line["heard"] == "Never open the" and line["qa"] == "needs_review" and line["qa_takes"] == 2
    assert line["checks"]["wer"] == {"value": 0.6667, "threshold": 0.35, "bound": "max", "pass": False}
    assert line["failed_checks"] == ["wer"] and line["take"] == 1 and line["review"] is None
    assert line["audio_path"] == f"/v1/jobs/{jobs_by_line['cut']}/audio"
    assert line["audio_url"].startswith("http") and line["duration_s"] == 1.25
    assert client.get(line["audio_path"], headers=auth(key)).get_data() == storage.get(cut["key"])
    every = get(client, key, f"/v1/batches/{batch_id}/review?all=true")["lines"]
    assert [(x["line_id"], x["qa"]) for x in every] == [
        ("good", "passed"), ("mumble", "needs_review"), ("cut", "needs_review"), ("plain", None),
    ]  # fmt: skip

    # Errors: a line that was not flagged, an unknown line, a bad decision, a bad body.
    for line_id in ("good", "plain"):
        assert error_code(decide(client, key, batch_id, line_id, {"decision": "approved"})) == (
            409,
            "review_not_needed",
        )
    assert error_code(decide(client, key, batch_id, "nope", {"decision": "approved"})) == (404, "line_not_found")
    assert error_code(decide(client, key, "f" * 32, "cut", {"decision": "approved"})) == (404, "batch_not_found")
    assert error_code(decide(client, key, batch_id, "cut", {"decision": "maybe"})) == (400, "invalid_decision")
    assert error_code(decide(client, key, batch_id, "cut", {"decision": "approved", "x": 1}))[0] == 400
    assert error_code(decide(client, key, batch_id, "cut", {"decision": "approved", "note": 5}))[0] == 400
    bad = client.post(f"/v1/batches/{batch_id}/lines/cut/review", data="approved", headers=auth(key))
    assert bad.status_code == 400
    assert error_code(client.get(f"/v1/batches/{batch_id}/review?all=maybe", headers=auth(key)))[0] == 400

    # One approved, with a note: who and when are recorded; the manifest and the counts say so.
    response = decide(client, key, batch_id, "mumble", {"decision": "approved", "note": "fine by ear"})
    assert response.status_code == 200, response.get_json()
    shown = response.get_json()["review"]
    assert shown["decision"] == "approved" and shown["note"] == "fine by ear"
    assert shown["by"] == {"key_id": key_id, "label": label} and shown["at"]
    assert get(client, key, f"/v1/batches/{batch_id}")["pending_reviews"] == 1
    assert [x["line_id"] for x in get(client, key, f"/v1/batches/{batch_id}/review")["lines"]] == ["cut"]
    assert batch_row(sessions, batch_id).finished_event == "batch.completed"  # one still pending: no event yet
    manifest = {r["line_id"]: r for r in get(client, key, f"/v1/batches/{batch_id}/manifest")["lines"]}
    assert {k: r["review"] for k, r in manifest.items()} == {
        "good": None, "mumble": "approved", "cut": None, "plain": None,
    }  # fmt: skip

    # The last pending one rejected: none pending in a finished batch, so batch.reviewed is owed, and sent.
    completions = batch_row(sessions, batch_id).completions
    assert decide(client, key, batch_id, "cut", {"decision": "rejected"}).status_code == 200
    batch = batch_row(sessions, batch_id)
    assert batch.finished_event == "batch.reviewed" and batch.completions == completions + 1
    with sessions() as session:
        assert deliveries.batch_owed(session, batch_id)
    view = get(client, key, f"/v1/batches/{batch_id}")
    assert view["pending_reviews"] == 0 and view["reviews"]["rejected"] == 1
    assert view["webhook"]["event"] == "batch.reviewed" and view["webhook"]["attempts"] == 0
    ctx = ctx_for(farm_settings, webhook_allow_private=True)
    assert deliver_batch_webhook(ctx, batch_id) == "delivered"
    (seen,) = receiver.received
    event = json.loads(seen.body)
    assert event["event"] == seen.headers["Voicefarm-Event"] == "batch.reviewed"
    assert (
        event["id"] == deliveries.batch_event_id(batch_id, completions + 1) and event["completion"] == completions + 1
    )
    assert event["batch"]["pending_reviews"] == 0 and event["batch"]["reviews"]["approved"] == 1
    assert (
        deliveries.sign(secret, seen.headers["Voicefarm-Timestamp"], seen.body) == seen.headers["Voicefarm-Signature"]
    )
    csv_rows = list(
        csv.DictReader(
            io.StringIO(storage.get(f"batches/{batch.tenant_id}/{batch_id}/manifest-{batch.completions}.csv").decode())
        )
    )
    assert {r["line_id"]: r["review"] for r in csv_rows} == {
        "good": "",
        "mumble": "approved",
        "cut": "rejected",
        "plain": "",
    }

    # A change of mind is recorded; it owes no second event.
    assert decide(client, key, batch_id, "cut", {"decision": "approved"}).status_code == 200
    assert batch_row(sessions, batch_id).completions == completions + 1
    csv_text = client.get(f"/v1/batches/{batch_id}/manifest?format=csv", headers=auth(key)).get_data(as_text=True)
    assert [r["review"] for r in csv.DictReader(io.StringIO(csv_text))] == ["", "approved", "approved", ""]

    # A re-render from the review: a new take, through the gate again, with no decision; the old take keeps its own.
    response = client.post(
        f"/v1/batches/{batch_id}/lines/cut", json={"text": "Never open the red door.", "seed": 11}, headers=auth(key)
    )
    assert response.status_code == 202, response.get_json()
    new_id = response.get_json()["id"]
    assert response.get_json()["batch"]["take"] == 2
    assert error_code(decide(client, key, batch_id, "cut", {"decision": "approved"})) == (409, "review_not_needed")
    view = get(client, key, f"/v1/batches/{batch_id}")
    assert not view["done"] and view["pending_reviews"] == 0 and view["reviews"]["flagged"] == 1
    manifest = {r["line_id"]: r for r in get(client, key, f"/v1/batches/{batch_id}/manifest")["lines"]}
    assert manifest["cut"]["review"] is None and manifest["cut"]["take"] == 2
    assert row(sessions, jobs_by_line["cut"]).review == "approved"  # the retired take keeps its decision
    new = row(sessions, new_id)
    assert (new.take, new.seed, new.qa is not None, new.review) == (2, 11, True, None)
    gate_like_the_qa_pool(sessions, storage, new_id, passed=False, heard="Never open the red")
    queue = get(client, key, f"/v1/batches/{batch_id}/review")
    assert [(x["line_id"], x["take"], x["job_id"], x["review"]) for x in queue["lines"]] == [("cut", 2, new_id, None)]
    assert queue["lines"][0]["text"] == "Never open the red door." and queue["lines"][0]["seed"] == 11
    assert batch_row(sessions, batch_id).finished_event == "batch.completed"  # finished again by the new take
    assert decide(client, key, batch_id, "cut", {"decision": "approved"}).status_code == 200
    assert batch_row(sessions, batch_id).finished_event == "batch.reviewed"

    # Another tenant sees none of it.
    other = new_api_key(sessions, "elsewhere")
    assert error_code(client.get(f"/v1/batches/{batch_id}/review", headers=auth(other))) == (404, "batch_not_found")
    assert error_code(decide(client, other, batch_id, "mumble", {"decision": "rejected"})) == (404, "batch_not_found")
    assert row(sessions, jobs_by_line["mumble"]).review == "approved"


def test_the_review_page_is_served_and_linked_from_the_batches_view(client: FlaskClient) -> None:
    page = client.get("/batches/" + "a" * 32 + "/review")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'data-batch-id="' + "a" * 32 + '"' in html and "review.js" in html
    script = client.get("/static/review.js").get_data(as_text=True)
    assert "/review" in script and "localStorage" in script
    assert "/review" in client.get("/static/app.js").get_data(as_text=True)


def test_pending_reviews_are_counted_from_the_gates_verdict_on_both_databases(database_url: str) -> None:
    """The verdict is read inside the result's JSON (`qa.needs_review`) by SQL: the same answer on SQLite and
    PostgreSQL."""
    sessions = make_session_factory(make_engine(database_url))
    with transaction(sessions) as session:
        tenant = tenants.get_or_create_tenant(session, "acme")
        batch = Batch(tenant_id=tenant.id, status="active", line_count=4)
        session.add(batch)
        session.flush()
        verdicts = {"a": {"passed": False, "needs_review": True}, "b": {"passed": True, "needs_review": False}}
        for n, line_id in enumerate(("a", "b", "c", "d")):
            result = {"key": f"k/{line_id}", "format": "wav"}
            if line_id in verdicts:
                result["qa"] = verdicts[line_id]
            session.add(
                Job(
                    tenant_id=tenant.id, engine="kokoro", text=line_id, voice="af_heart", mode="preset",
                    language="en", status="succeeded" if line_id != "d" else "queued", result=result,
                    batch_id=batch.id, line_id=line_id, line_no=n + 1,
                )
            )  # fmt: skip
        batch_id = batch.id
    with transaction(sessions) as session:
        assert review.counts(session, [batch_id])[batch_id].view() == {
            "flagged": 1, "pending": 1, "approved": 0, "rejected": 0,
        }  # fmt: skip
        loaded = session.get(Batch, batch_id)
        assert loaded is not None
        assert [j.line_id for j in review.queue(session, loaded)] == ["a"]
        line, owed = review.decide(session, loaded, "a", "rejected", None, None)
        assert line.review == "rejected" and not owed  # the batch is not finished: d is queued
        session.execute(update(Job).where(Job.line_id == "d").values(replaced=True))
    with transaction(sessions) as session:
        assert review.counts(session, [batch_id])[batch_id].pending == 0
        assert review.queue(session, session.get(Batch, batch_id)) == []  # type: ignore[arg-type]
