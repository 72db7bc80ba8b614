"""Secrets at rest: webhook signing secrets are stored encrypted under VOICEFARM_SECRET_KEY (Fernet), keys rotate
(the first encrypts, all decrypt; `voicefarm keys reencrypt`), rows written before encryption keep working, and
the API refuses to start without a key. Key roles: the local key is an operator key, `keys create --operator`."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from producer.app import create_app
from shared import tenants
from shared.config import Settings
from shared.db import transaction
from shared.models import ApiKey
from shared.secrets import SecretBox, SecretKeyError, ensure_key_file, is_sealed, require_secret_key
from tests.support.fixtures import auth
from voicefarm.cli import main


def key() -> str:
    return Fernet.generate_key().decode()


def stored(sessions: sessionmaker[Session], key_id: str) -> str:
    with sessions() as session:
        value = session.scalar(select(ApiKey.webhook_secret).where(ApiKey.id == key_id))
        assert value is not None
        return value


def test_sealed_secrets_open_with_any_key_and_plaintext_ones_as_they_are() -> None:
    first, second = key(), key()
    box = SecretBox([first])
    sealed = box.seal("whsec_abc")
    assert is_sealed(sealed) and "whsec_abc" not in sealed and box.open(sealed) == "whsec_abc"
    assert box.open("whsec_written_before") == "whsec_written_before"  # a row from before encryption
    # Rotation: the new key first, the old one still decrypts; resealed, only the new key is needed.
    rotating = SecretBox([second, first])
    assert rotating.open(sealed) == "whsec_abc"
    resealed = rotating.reseal(sealed)
    assert SecretBox([second]).open(resealed) == "whsec_abc"
    with pytest.raises(SecretKeyError, match="none of"):
        SecretBox([first]).open(resealed)
    assert SecretBox([second]).open(rotating.reseal("whsec_plain")) == "whsec_plain"
    with pytest.raises(SecretKeyError, match="key 2 is not a Fernet key"):
        SecretBox([first, "not-a-key"])
    with pytest.raises(SecretKeyError, match="no VOICEFARM_SECRET_KEY"):
        SecretBox([]).seal("whsec_x")


def test_the_settings_hold_several_keys_or_the_embedded_farms_file(tmp_path: Path) -> None:
    first, second = key(), key()
    assert Settings(data_dir=tmp_path, secret_key=f" {first}, {second} ").secret_keys() == [first, second]
    assert Settings(data_dir=tmp_path, secret_key="").secret_keys() == []
    with pytest.raises(SecretKeyError, match="VOICEFARM_SECRET_KEY"):
        require_secret_key(Settings(data_dir=tmp_path, secret_key=""))
    made = ensure_key_file(tmp_path)
    assert ensure_key_file(tmp_path) == made and (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600
    assert Settings(data_dir=tmp_path, secret_key="").secret_keys() == [made]
    require_secret_key(Settings(data_dir=tmp_path, secret_key=""))


def test_the_api_refuses_to_start_without_a_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("VOICEFARM_SECRET_KEY")
    monkeypatch.setenv("VOICEFARM_DATA_DIR", str(tmp_path))
    for command in (["api"], ["webhook-worker"], ["keys", "create", "--tenant", "t"]):
        with pytest.raises(SystemExit) as caught:
            main(command)
        assert "VOICEFARM_SECRET_KEY" in str(caught.value) and "Fernet" in str(caught.value), command


def test_the_stored_column_is_not_the_secret_and_the_api_shows_the_secret(
    farm_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    box = SecretBox.from_settings(farm_settings)
    with transaction(sessions) as session:
        row, plaintext = tenants.create_key(session, "sealed", secrets=box)
    secret = box.open(stored(sessions, row.id))
    assert secret.startswith("whsec_") and stored(sessions, row.id) != secret and is_sealed(stored(sessions, row.id))
    client = create_app(farm_settings).test_client()
    assert client.get("/v1/webhook-secret", headers=auth(plaintext)).get_json()["secret"] == secret
    rotated = client.post("/v1/webhook-secret/rotate", headers=auth(plaintext)).get_json()["secret"]
    assert rotated != secret and is_sealed(stored(sessions, row.id)) and box.open(stored(sessions, row.id)) == rotated
    assert client.get("/v1/webhook-secret", headers=auth(plaintext)).get_json()["secret"] == rotated
    # A row written before encryption (its secret in the clear) still answers.
    with transaction(sessions) as session:
        old, old_plaintext = tenants.create_key(session, "old")
    assert client.get("/v1/webhook-secret", headers=auth(old_plaintext)).get_json()["secret"] == old.webhook_secret


def test_keys_cli_roles_and_reencrypt(
    pg_database_url: str,
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first, second = key(), key()
    monkeypatch.setenv("DATABASE_URL", pg_database_url)
    monkeypatch.setenv("VOICEFARM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("VOICEFARM_SECRET_KEY", first)
    assert main(["keys", "create", "--tenant", "ops", "--operator"]) == 0
    assert main(["keys", "create", "--tenant", "studio"]) == 0
    assert main(["keys", "ensure-local"]) == 0
    printed = capsys.readouterr().out
    with sessions() as session:
        rows = {tenant.name: row for row, tenant in tenants.list_keys(session)}
    assert {name: row.role for name, row in rows.items()} == {"ops": "operator", "studio": "plain", "local": "operator"}
    shown = [line.split(": ", 1)[1] for line in printed.splitlines() if line.startswith("webhook signing secret")]
    assert shown == [SecretBox([first]).open(rows[name].webhook_secret) for name in ("ops", "studio")]
    assert all(is_sealed(row.webhook_secret) for row in rows.values())
    assert main(["keys", "list"]) == 0
    listing = capsys.readouterr().out
    assert "operator" in listing and "plain" in listing

    with transaction(sessions) as session:  # a key from before encryption: its secret in the clear
        legacy, _ = tenants.create_key(session, "legacy")
    secrets = {row.id: SecretBox([first]).open(stored(sessions, row.id)) for row in [*rows.values(), legacy]}
    # Rotation: the new key first, then reencrypt; after it the old key can go.
    monkeypatch.setenv("VOICEFARM_SECRET_KEY", f"{second},{first}")
    assert main(["keys", "reencrypt"]) == 0
    assert "re-encrypted 4 webhook secret(s)" in capsys.readouterr().out
    assert {key_id: SecretBox([second]).open(stored(sessions, key_id)) for key_id in secrets} == secrets
