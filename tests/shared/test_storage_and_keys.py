"""Presigned URLs against a signature-checking S3, and API-key administration from the CLI."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from shared.config import Settings
from shared.keys import hash_key
from shared.storage import Storage
from voicefarm.cli import main


def test_presigned_urls_expire(farm_settings: Settings) -> None:
    storage = Storage.from_settings(farm_settings)
    storage.put("expiry/probe.wav", b"RIFF-probe", "wav")
    url = storage.presigned_url("expiry/probe.wav", expires_s=1)
    assert requests.get(url, timeout=5).content == b"RIFF-probe"
    time.sleep(2.5)
    assert requests.get(url, timeout=5).status_code == 403


def test_keys_cli_creates_lists_and_revokes(
    pg_database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", pg_database_url)
    monkeypatch.setenv("VOICEFARM_DATA_DIR", str(tmp_path))
    assert main(["keys", "create", "--tenant", "studio", "--name", "ci"]) == 0
    created = capsys.readouterr().out
    key = created.strip().splitlines()[-1]
    key_id = created.split()[2]
    assert key.startswith("vf_")

    assert main(["keys", "list"]) == 0
    listing = capsys.readouterr().out
    assert key_id in listing and "tenant=studio" in listing and "active" in listing
    # Listings show a label, never the key or its hash.
    assert key not in listing and hash_key(key) not in listing

    assert main(["keys", "revoke", key_id]) == 0
    capsys.readouterr()
    assert main(["keys", "list"]) == 0
    assert "revoked" in capsys.readouterr().out


def test_local_key_is_created_once(
    pg_database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", pg_database_url)
    monkeypatch.setenv("VOICEFARM_DATA_DIR", str(tmp_path))
    assert main(["keys", "ensure-local"]) == 0
    key = (tmp_path / "api_key").read_text().strip()
    assert (tmp_path / "api_key").stat().st_mode & 0o777 == 0o600
    assert main(["keys", "ensure-local"]) == 0
    assert (tmp_path / "api_key").read_text().strip() == key
    assert key not in capsys.readouterr().out
