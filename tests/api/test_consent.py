"""Consent before cloning at the API (shared/provenance/consent.py): statements, each tenant's policy, refusals
before any work, single use and expiry, the record in the voice's view, and deletion. Real PostgreSQL, Redis and
SeaweedFS; what the clone job checks in the recording is tests/worker/test_consent_checks.py."""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from producer.app import create_app
from shared import tenants, voices
from shared.config import Settings
from shared.db import make_engine, make_session_factory, transaction
from shared.models import Consent, Job, Tenant, Voice
from shared.provenance import consent
from shared.storage import Storage
from tests.api.test_upload_bombs import wav
from tests.support.fixtures import auth, new_api_key
from voicefarm.cli import main


def error(response: object) -> tuple[int, str]:
    body = response.get_json()  # type: ignore[attr-defined]
    return response.status_code, body["error"]["code"]  # type: ignore[attr-defined]


def clone(client: FlaskClient, key: str, consent_audio: bytes | None = None, **form: str) -> object:
    data: dict[str, object] = {"audio": (io.BytesIO(wav(5)), "ref.wav"), **form}
    if consent_audio is not None:
        data["consent_audio"] = (io.BytesIO(consent_audio), "consent.wav")
    return client.post("/v1/voices", data=data, headers=auth(key))


def statement(client: FlaskClient, key: str, language: str = "en") -> dict:
    response = client.get(f"/v1/consent/statement?language={language}", headers=auth(key))
    assert response.status_code == 200, response.get_json()
    return dict(response.get_json())


def stored(storage: Storage, sessions: sessionmaker[Session], tenant: str = "studio") -> list[str]:
    """The tenant's stored voice objects (the bucket lives as long as the test module)."""
    return storage.list_keys(f"voices/{_tenant(sessions, tenant)}/")


@pytest.fixture
def verified_key(sessions: sessionmaker[Session]) -> str:
    """A key of a new tenant, as `voicefarm keys create` makes it: its policy is the default, verified."""
    with transaction(sessions) as session:
        _row, plaintext = tenants.create_key(session, "studio")
    return plaintext


def test_a_statement_has_farm_chosen_words_and_expires(client: FlaskClient, verified_key: str) -> None:
    first, second = statement(client, verified_key), statement(client, verified_key)
    assert first["id"] != second["id"] and first["id"].startswith("cs_")
    assert first["policy"] == "verified" and first["language"] == "en"
    assert first["text"].startswith("I agree that my voice may be cloned")
    # The words differ from one statement to the next (4 of 37: the same four by chance once in 66,045 draws).
    assert first["text"] != second["text"]
    words = first["text"].split("My words are ")[1].rstrip(".").replace(" and ", ", ").split(", ")
    assert len(words) == consent.WORD_COUNT and set(words) <= set(consent.WORDS["en"])
    left = (datetime.fromisoformat(first["expires_at"]) - datetime.now(UTC)).total_seconds()
    assert 800 < left <= 900  # consent_statement_ttl_s
    for language, marker in (("zh", "我同意"), ("ja", "同意します")):
        body = statement(client, verified_key, language)
        assert marker in body["text"] and body["language"] == language
    assert error(client.get("/v1/consent/statement?language=fr", headers=auth(verified_key))) == (
        400,
        "unsupported_language",
    )
    assert client.get("/v1/consent/statement").status_code == 401


def test_the_statement_expires_after_its_time(
    farm_settings: Settings, verified_key: str, sessions: sessionmaker[Session]
) -> None:
    client = create_app(farm_settings.model_copy(update={"consent_statement_ttl_s": 600.0})).test_client()
    body = statement(client, verified_key)
    with sessions() as session:
        row = session.get(Consent, body["id"])
        assert row is not None and row.expires_at is not None
        ttl = (row.expires_at - row.created_at).total_seconds()
    assert ttl == pytest.approx(600.0)
    assert datetime.fromisoformat(body["expires_at"]) == row.expires_at


def test_a_verified_tenant_must_send_a_recording_before_any_work(
    client: FlaskClient, verified_key: str, sessions: sessionmaker[Session], farm_settings: Settings
) -> None:
    storage = Storage.from_settings(farm_settings)
    refused = clone(client, verified_key)
    assert error(refused) == (400, "consent_required")
    assert "GET /v1/consent/statement" in refused.get_json()["error"]["message"]  # type: ignore[attr-defined]
    # Asserting consent is not enough for a verified tenant.
    assert error(clone(client, verified_key, consent_attested="true")) == (400, "consent_required")
    # A recording without the statement's id, or an id without a recording.
    assert error(clone(client, verified_key, consent_audio=wav(5))) == (400, "consent_required")
    assert error(clone(client, verified_key, consent_id=statement(client, verified_key)["id"])) == (
        400,
        "consent_required",
    )
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Voice)) == 0
        assert session.scalar(select(func.count()).select_from(Job)) == 0
    assert stored(storage, sessions) == []


def test_a_statement_is_used_once_and_the_record_is_in_the_voice_view(
    client: FlaskClient, verified_key: str, sessions: sessionmaker[Session], farm_settings: Settings
) -> None:
    storage = Storage.from_settings(farm_settings)
    issued = statement(client, verified_key)
    accepted = clone(client, verified_key, consent_audio=wav(6), consent_id=issued["id"], name="narrator")
    assert accepted.status_code == 202, accepted.get_json()  # type: ignore[attr-defined]
    voice = accepted.get_json()  # type: ignore[attr-defined]
    record = voice["consent"]
    assert record["method"] == "verified" and record["status"] == "pending"
    assert record["statement_id"] == issued["id"] and record["statement"] == issued["text"]
    assert record["recording"] is True and verified_key.startswith(record["key"].rstrip("…"))
    assert record["transcript"] is None and record["scores"] is None  # the clone job checks it
    recording_key = voices.consent_key(_tenant(sessions, "studio"), voice["id"])
    assert storage.get(recording_key) == wav(6)
    shown = client.get(f"/v1/voices/{voice['id']}", headers=auth(verified_key)).get_json()
    assert shown["consent"] == record
    listed = client.get("/v1/voices", headers=auth(verified_key)).get_json()["voices"]
    assert [v["consent"]["statement_id"] for v in listed] == [issued["id"]]

    # The same statement again: spent.
    before = stored(storage, sessions)
    reused = clone(client, verified_key, consent_audio=wav(6), consent_id=issued["id"])
    assert error(reused) == (400, "consent_expired")
    assert "already used" in reused.get_json()["error"]["message"]  # type: ignore[attr-defined]
    assert stored(storage, sessions) == before  # the refused request's clips were removed
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Voice)) == 1


def test_an_expired_statement_is_refused(
    farm_settings: Settings, verified_key: str, sessions: sessionmaker[Session]
) -> None:
    client = create_app(farm_settings.model_copy(update={"consent_statement_ttl_s": 1.0})).test_client()
    issued = statement(client, verified_key)
    time.sleep(1.5)
    expired = clone(client, verified_key, consent_audio=wav(6), consent_id=issued["id"])
    assert error(expired) == (400, "consent_expired")
    assert "expired" in expired.get_json()["error"]["message"]  # type: ignore[attr-defined]
    assert stored(Storage.from_settings(farm_settings), sessions) == []
    with sessions() as session:
        row = session.get(Consent, issued["id"])
        assert row is not None and row.status == "issued" and row.voice_id is None


def test_another_tenants_statement_is_not_found(
    client: FlaskClient, verified_key: str, sessions: sessionmaker[Session]
) -> None:
    other = new_api_key(sessions, "elsewhere", consent_policy="verified")
    theirs = statement(client, other)
    assert error(clone(client, verified_key, consent_audio=wav(6), consent_id=theirs["id"])) == (
        404,
        "consent_not_found",
    )
    assert error(clone(client, verified_key, consent_audio=wav(6), consent_id="cs_" + "0" * 24)) == (
        404,
        "consent_not_found",
    )
    # Their statement is still good for them.
    assert clone(client, other, consent_audio=wav(6), consent_id=theirs["id"]).status_code == 202  # type: ignore[attr-defined]


def test_an_attested_tenant_asserts_consent_and_it_is_recorded(
    client: FlaskClient, sessions: sessionmaker[Session]
) -> None:
    key = new_api_key(sessions, "agency", consent_policy="attested")
    refused = clone(client, key)
    assert error(refused) == (400, "consent_required")
    assert "consent_attested=true" in refused.get_json()["error"]["message"]  # type: ignore[attr-defined]
    assert error(clone(client, key, consent_attested="maybe")) == (400, "invalid_consent_attested")
    accepted = clone(client, key, consent_attested="true")
    assert accepted.status_code == 202  # type: ignore[attr-defined]
    record = accepted.get_json()["consent"]  # type: ignore[attr-defined]
    assert record["method"] == "attested" and record["status"] == "attested"
    assert record["key"] and key.startswith(record["key"].rstrip("…")) and record["at"]
    # A recording is checked whatever the policy.
    issued = statement(client, key)
    verified = clone(client, key, consent_audio=wav(6), consent_id=issued["id"]).get_json()  # type: ignore[attr-defined]
    assert verified["consent"]["method"] == "verified"


def test_a_tenant_with_consent_off_clones_as_before(client: FlaskClient, api_key: str) -> None:
    accepted = clone(client, api_key)
    assert accepted.status_code == 202  # type: ignore[attr-defined]
    assert accepted.get_json()["consent"] is None  # type: ignore[attr-defined]


def test_deleting_a_voice_deletes_its_consent_recording_and_record(
    client: FlaskClient, verified_key: str, sessions: sessionmaker[Session], farm_settings: Settings
) -> None:
    storage = Storage.from_settings(farm_settings)
    issued = statement(client, verified_key)
    voice = clone(client, verified_key, consent_audio=wav(6), consent_id=issued["id"]).get_json()  # type: ignore[attr-defined]
    prefix = voices.voice_prefix(_tenant(sessions, "studio"), voice["id"])
    assert sorted(k.removeprefix(prefix) for k in storage.list_keys(prefix)) == ["consent", "upload"]
    assert client.delete(f"/v1/voices/{voice['id']}", headers=auth(verified_key)).status_code == 204
    assert storage.list_keys(prefix) == []
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Consent)) == 0
        assert session.get(Voice, voice["id"]) is None


def test_policies_are_set_from_the_command_line_and_the_local_tenant_attests(
    pg_database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", pg_database_url)
    monkeypatch.setenv("VOICEFARM_DATA_DIR", str(tmp_path))
    sessions = make_session_factory(make_engine(pg_database_url))
    assert main(["keys", "create", "--tenant", "studio"]) == 0
    assert main(["keys", "ensure-local"]) == 0
    capsys.readouterr()
    with sessions() as session:
        policies = dict(session.execute(select(Tenant.name, Tenant.consent_policy)).all())
    assert policies == {"studio": "verified", "local": "attested"}
    assert main(["tenants", "set-consent", "studio", "off"]) == 0
    assert "consent policy off" in capsys.readouterr().out
    assert main(["tenants", "list"]) == 0
    listing = capsys.readouterr().out
    assert any(line.startswith("studio") and "consent=off" in line for line in listing.splitlines())
    assert any(line.startswith("local") and "consent=attested" in line for line in listing.splitlines())
    with pytest.raises(SystemExit, match="no tenant named 'nobody'"):
        main(["tenants", "set-consent", "nobody", "off"])
    with pytest.raises(SystemExit):
        main(["tenants", "set-consent", "studio", "maybe"])  # argparse: the three policies only


def _tenant(sessions: sessionmaker[Session], name: str) -> str:
    with sessions() as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == name))
    assert tenant_id is not None
    return tenant_id
