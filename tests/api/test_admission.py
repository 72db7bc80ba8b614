"""What a tenant may add, counted on every path and atomically, and what it is entitled to (shared/admission.py):
queue depth, batch backlog, clone jobs, re-renders, cached lines, voices, lexicon entries, job priority; fair
sends between tenants (shared/queue.py `fair_priority`); migrations under a lock. Real PostgreSQL, Redis, S3."""

from __future__ import annotations

import io
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from producer.app import create_app
from producer.limits import check_queue_depth
from shared import admission, tenants
from shared.config import Settings
from shared.db import make_engine, make_session_factory, migrate, transaction
from shared.errors import TooManyRequests
from shared.jobs import state as jobs
from shared.models import Job, Tenant, Voice
from shared.queue import fair_priority
from shared.storage import Storage
from shared.text import lexicon
from tests.api.test_upload_bombs import wav
from tests.support.batches import broker_messages, finish_like_a_worker
from tests.support.fixtures import auth, new_api_key
from voicefarm.cli import main
from voicefarm.ops import services

FIELDS = {"engine": "kokoro", "text": "hello", "voice": "af_heart", "mode": "clone", "language": "en"}


def client_with(settings: Settings, **overrides: object) -> FlaskClient:
    return create_app(settings.model_copy(update=overrides)).test_client()


def error(response: object) -> tuple[int, str]:
    body = response.get_json()  # type: ignore[attr-defined]
    return response.status_code, body["error"]["code"]  # type: ignore[attr-defined]


# -- priority: an entitlement -------------------------------------------------------------------------------------
def test_a_priority_above_the_tenants_entitlement_is_refused(
    client: FlaskClient, api_key: str, sessions: sessionmaker[Session]
) -> None:
    assert client.post("/v1/jobs", json={"text": "as usual", "priority": 5}, headers=auth(api_key)).status_code == 202
    refused = client.post("/v1/jobs", json={"text": "urgent", "priority": 6}, headers=auth(api_key))
    assert error(refused) == (403, "priority_not_allowed")
    assert "voicefarm tenants set-priority" in refused.get_json()["error"]["message"]
    with transaction(sessions) as session:
        assert admission.set_max_priority(session, "acme", 8).max_priority == 8
    assert client.post("/v1/jobs", json={"text": "urgent", "priority": 8}, headers=auth(api_key)).status_code == 202
    assert error(client.post("/v1/jobs", json={"text": "more", "priority": 9}, headers=auth(api_key)))[0] == 403


def test_speech_sends_at_interactive_priority_only_for_an_entitled_tenant(
    farm_settings: Settings, api_key: str, sessions: sessionmaker[Session]
) -> None:
    """The speech endpoint sets its own priority (9): a tenant not entitled to it sends at its highest instead."""
    client = client_with(farm_settings, speech_start_wait_s=0.5)  # no worker: each request waits, then cancels
    body = {"model": "tts-1", "voice": "alloy", "input": "Right now, please."}

    def speech_priority() -> int:
        assert client.post("/v1/audio/speech", json=body, headers=auth(api_key)).status_code == 503
        with sessions() as session:
            return int(session.scalars(select(Job.priority).order_by(Job.created_at.desc())).first() or -1)

    assert speech_priority() == 5
    with transaction(sessions) as session:
        admission.set_max_priority(session, "acme", 7)
    assert speech_priority() == 7
    with transaction(sessions) as session:
        admission.set_max_priority(session, "acme", 9)
    assert speech_priority() == 9


def test_priorities_are_granted_from_the_command_line_and_the_local_tenant_has_all(
    pg_database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", pg_database_url)
    monkeypatch.setenv("VOICEFARM_DATA_DIR", str(tmp_path))
    sessions = make_session_factory(make_engine(pg_database_url))
    new_api_key(sessions, "studio")
    assert main(["tenants", "set-priority", "studio", "7"]) == 0
    assert "up to 7" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no tenant named 'nobody'"):
        main(["tenants", "set-priority", "nobody", "7"])
    with pytest.raises(SystemExit):
        main(["tenants", "set-priority", "studio", "10"])  # argparse: 0-9 only
    assert main(["keys", "ensure-local"]) == 0
    assert main(["tenants", "list"]) == 0
    listing = capsys.readouterr().out
    assert "studio" in listing and "max_priority=7" in listing
    with sessions() as session:
        priorities = dict(session.execute(select(Tenant.name, Tenant.max_priority)).all())
    assert priorities == {"studio": 7, "local": 9}


# -- atomic counting ----------------------------------------------------------------------------------------------
def test_queue_depth_is_counted_and_inserted_atomically(pg_database_url: str) -> None:
    """The check and the insert are one critical section per tenant: a second request waits for the first's commit
    and then counts its job, where it used to count before the first had inserted and overshoot the limit."""
    db = make_session_factory(make_engine(pg_database_url))
    with transaction(db) as session:
        tenant_id = tenants.get_or_create_tenant(session, "acme").id
    first_checked, release = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def submit(name: str, hold: bool) -> None:
        try:
            with transaction(db) as session:
                check_queue_depth(session, tenant_id, 1)
                if hold:
                    first_checked.set()
                    release.wait(10)
                jobs.create_job(session, tenant_id=tenant_id, idempotency_key=None, **FIELDS)
            outcome[name] = "created"
        except TooManyRequests as exc:
            outcome[name] = exc.code

    first = threading.Thread(target=submit, args=("first", True))
    first.start()
    assert first_checked.wait(10)
    second = threading.Thread(target=submit, args=("second", False))
    second.start()
    time.sleep(0.5)
    assert second.is_alive() and "second" not in outcome  # waiting on the tenant's lock, not counting yet
    release.set()
    first.join(10)
    second.join(10)
    assert outcome == {"first": "created", "second": "queue_full"}
    with db() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1


def test_clone_jobs_count_against_the_queue_and_voices_against_their_cap(
    farm_settings: Settings, api_key: str, sessions: sessionmaker[Session]
) -> None:
    storage = Storage.from_settings(farm_settings)
    client = client_with(farm_settings, max_queued_per_tenant=2, max_voices_per_tenant=2)

    def clone() -> object:
        return client.post("/v1/voices", data={"audio": (io.BytesIO(wav(5)), "a.wav")}, headers=auth(api_key))

    assert clone().status_code == 202  # its clone job is queued: 1 of 2
    assert client.post("/v1/jobs", json={"text": "one job"}, headers=auth(api_key)).status_code == 202
    assert error(clone()) == (429, "queue_full")  # the queue holds 2: the clone job would be a third
    with sessions() as session:
        tenant_id = session.scalars(select(Voice.tenant_id)).one()
    assert len(storage.list_keys(f"voices/{tenant_id}/")) == 1  # the refused clip was not kept
    client = client_with(farm_settings, max_voices_per_tenant=2)
    assert clone().status_code == 202
    assert error(clone()) == (403, "voice_limit")
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Voice)) == 2


def test_a_re_render_counts_against_the_backlog(farm_settings: Settings, api_key: str) -> None:
    client = client_with(farm_settings, max_queued_batch_lines_per_tenant=2)
    lines = [{"id": "a", "text": "Line a."}, {"id": "b", "text": "Line b."}]
    batch = client.post("/v1/batches", json={"lines": lines}, headers=auth(api_key))
    assert batch.status_code == 202
    # Re-rendering a queued line retires it (canceled) but the new take is one more queued line: 2 + 1 > 2.
    again = client.post(f"/v1/batches/{batch.get_json()['id']}/lines/a", json={"speed": 1.1}, headers=auth(api_key))
    assert error(again) == (429, "batch_queue_full")


def test_cached_lines_count_at_admission(
    farm_settings: Settings, api_key: str, sessions: sessionmaker[Session]
) -> None:
    """A batch the cache would answer whole is still counted line by line when it is admitted."""
    client = client_with(farm_settings, max_queued_batch_lines_per_tenant=3)
    made = client.post("/v1/jobs", json={"text": "Made once.", "seed": 1}, headers=auth(api_key)).get_json()
    finish_like_a_worker(sessions, Storage.from_settings(farm_settings), made["id"])
    queued = client.post("/v1/batches", json={"lines": [{"id": "q1", "text": "Q one."}]}, headers=auth(api_key))
    assert queued.status_code == 202
    cached = [{"id": f"c{i}", "text": "Made once."} for i in range(3)]
    body = {"lines": cached, "defaults": {"seed": 1, "qa": False}}
    assert error(client.post("/v1/batches", json=body, headers=auth(api_key))) == (429, "batch_queue_full")
    body["lines"] = cached[:2]
    answered = client.post("/v1/batches", json=body, headers=auth(api_key))
    assert answered.status_code == 202 and answered.get_json()["counts"]["succeeded"] == 2


def test_the_lexicon_cap_is_enforced_on_put(client: FlaskClient, api_key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lexicon, "MAX_TENANT_ENTRIES", 3)
    for term in ("Alpha", "Beta", "Gamma"):
        put = client.put(f"/v1/lexicon/en/{term}", json={"pronunciation": "ˈælfə"}, headers=auth(api_key))
        assert put.status_code == 201
    full = client.put("/v1/lexicon/en/Delta", json={"pronunciation": "ˈdɛltə"}, headers=auth(api_key))
    assert error(full) == (409, "lexicon_full")
    # Replacing an entry adds none: allowed at the cap.
    assert client.put("/v1/lexicon/en/Beta", json={"pronunciation": "ˈbeɪtə"}, headers=auth(api_key)).status_code == 200


# -- fair sends -----------------------------------------------------------------------------------------------------
def test_fair_priority_steps_down_per_doubling_and_stays_above_batch_lines() -> None:
    assert [fair_priority(5, n) for n in (0, 1, 2, 3, 4, 7, 8, 100)] == [5, 4, 3, 3, 2, 2, 1, 1]
    assert [fair_priority(9, n) for n in (0, 1, 3, 255)] == [9, 8, 7, 1]
    assert fair_priority(1, 50) == 1 and fair_priority(0, 50) == 0  # asked that low: as asked


def test_a_tenant_with_one_job_is_served_before_most_of_a_tenants_fifty(
    client: FlaskClient, sessions: sessionmaker[Session], farm_settings: Settings
) -> None:
    """Tenant A submits 50 interactive jobs, then tenant B one. First come first served (all at priority 5, as
    the farm sent them before) would put B's job 51st in the broker; sent at fair priorities, A's burst steps down
    a priority per doubling of its backlog while B's lone job keeps 5, so B's job is taken second."""
    key_a, key_b = new_api_key(sessions, "tenant-a"), new_api_key(sessions, "tenant-b")
    a_ids = [
        client.post("/v1/jobs", json={"text": f"A line {i}."}, headers=auth(key_a)).get_json()["id"] for i in range(50)
    ]
    b_id = client.post("/v1/jobs", json={"text": "B's only line."}, headers=auth(key_b)).get_json()["id"]
    order = [job_id for _queue, job_id in broker_messages(farm_settings.broker_url)]
    assert sorted(order) == sorted([*a_ids, b_id])
    assert order.index(b_id) == 1, order.index(b_id)  # behind A's first (sent before B asked), ahead of 49
    assert order[0] == a_ids[0]
    # Within a tenant, its own jobs keep their order.
    assert [j for j in order if j in a_ids][:8] == a_ids[:8]


# -- migrations ------------------------------------------------------------------------------------------------------
def test_replicas_that_start_together_migrate_one_after_the_other(database_url_pg: str) -> None:
    name = "vfmig_" + uuid.uuid4().hex[:8]
    services.create_database(database_url_pg, name)
    parts = urlsplit(database_url_pg)
    url = Settings(database_url=urlunsplit((parts.scheme, parts.netloc, "/" + name, "", ""))).resolved_database_url()
    errors: list[BaseException] = []

    def start() -> None:
        try:
            migrate(url)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    replicas = [threading.Thread(target=start) for _ in range(4)]
    for replica in replicas:
        replica.start()
    for replica in replicas:
        replica.join(120)
    assert errors == []
    engine = make_engine(url)
    with engine.connect() as conn:
        versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    engine.dispose()
    assert len(versions) == 1
