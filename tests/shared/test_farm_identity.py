"""One farm, one namespace: a farm's id (setting, data dir, database), its claims on the broker and the bucket, the
refusal of a process whose broker or bucket another farm holds, and `voicefarm up` moving its embedded services
off ports another farm's services hold. Real Redis, S3 and PostgreSQL."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import redis
from sqlalchemy.orm import Session, sessionmaker

from shared import identity
from shared.config import ENDPOINTS_FILE, Settings
from shared.storage import Storage
from tests.conftest import S3Settings
from tests.support.fixtures import make_settings
from voicefarm.cli import main
from voicefarm.ops.farm import place_services


@pytest.fixture
def own_bucket(s3_settings: S3Settings) -> S3Settings:
    """A bucket nobody has claimed yet (created on the first claim)."""
    from dataclasses import replace

    return replace(s3_settings, bucket="vf-owner-" + uuid.uuid4().hex[:12])


def settings_for(farm_settings: Settings, bucket: S3Settings, farm_id: str) -> Settings:
    return farm_settings.model_copy(update={"farm_id": farm_id, "s3_bucket": bucket.bucket})


def test_the_farm_id_comes_from_the_setting_then_the_data_dir_then_the_database(
    farm_settings: Settings, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    assert identity.farm_id(farm_settings.model_copy(update={"farm_id": "farm-set"})) == "farm-set"
    bare = farm_settings.model_copy(update={"farm_id": "", "data_dir": tmp_path / "fresh"})
    # Nothing names it: the database makes one, and every later process reads the same.
    stored = identity.farm_id(bare, sessions)
    assert stored.startswith("farm-") and identity.farm_id(bare) == stored == identity.stored_farm_id(sessions)
    # A data dir of `voicefarm up` names its own, made once.
    local = identity.ensure_local_farm_id(tmp_path / "up")
    assert identity.ensure_local_farm_id(tmp_path / "up") == local != stored
    assert identity.farm_id(bare.model_copy(update={"data_dir": tmp_path / "up"})) == local
    assert (tmp_path / "up" / identity.FARM_ID_FILE).read_text().strip() == local


def test_migrate_records_the_farms_own_id_in_a_database_that_has_none(
    farm_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    assert identity.record_farm_id(farm_settings.model_copy(update={"farm_id": "farm-up"}), sessions) == "farm-up"
    # Later the database keeps its id (a warning says that this process names another).
    assert identity.record_farm_id(farm_settings.model_copy(update={"farm_id": "farm-else"}), sessions) == "farm-up"


def test_a_second_farm_on_the_same_broker_is_refused_with_the_fix(
    farm_settings: Settings, own_bucket: S3Settings
) -> None:
    first = settings_for(farm_settings, own_bucket, "farm-first")
    identity.claim(first, "farm-first")
    identity.claim(first, "farm-first")  # the same farm's next process: fine
    client = redis.Redis.from_url(first.broker_url)
    assert client.get(identity.OWNER_KEY) == b"farm-first"
    assert identity.bucket_owner(Storage.from_settings(first)) == "farm-first"
    with pytest.raises(identity.FarmConflict) as caught:
        identity.claim(first, "farm-second")
    message = str(caught.value)
    assert "farm-first" in message and "farm-second" in message and "BROKER_URL" in message
    assert caught.value.other == "farm-first"


def test_a_second_farm_in_the_same_bucket_is_refused_with_the_fix(
    farm_settings: Settings, own_bucket: S3Settings, broker_url: str
) -> None:
    identity.claim(settings_for(farm_settings, own_bucket, "farm-first"), "farm-first")
    # Another broker (a Redis database of its own), the same bucket.
    other = settings_for(farm_settings, own_bucket, "farm-second").model_copy(
        update={"broker_url": broker_url.rsplit("/", 1)[0] + "/0"}
    )
    redis.Redis.from_url(other.broker_url).delete(identity.OWNER_KEY)
    with pytest.raises(identity.FarmConflict) as caught:
        identity.claim(other, "farm-second")
    assert "farm-first" in str(caught.value) and "VOICEFARM_S3_BUCKET" in str(caught.value)
    redis.Redis.from_url(other.broker_url).delete(identity.OWNER_KEY)


def test_a_worker_of_another_farm_refuses_to_start(
    farm_settings: Settings, own_bucket: S3Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    identity.claim(settings_for(farm_settings, own_bucket, "farm-first"), "farm-first")
    env = {
        "DATABASE_URL": farm_settings.database_url,
        "BROKER_URL": farm_settings.broker_url,
        "S3_ENDPOINT_URL": farm_settings.s3_endpoint_url,
        "AWS_ACCESS_KEY_ID": farm_settings.s3_access_key,
        "AWS_SECRET_ACCESS_KEY": farm_settings.s3_secret_key,
        "VOICEFARM_S3_BUCKET": own_bucket.bucket,
        "VOICEFARM_DATA_DIR": str(tmp_path),
        "VOICEFARM_FARM_ID": "farm-second",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for command in (["worker", "--cpu", "1"], ["reconcile", "--once"]):
        with pytest.raises(SystemExit) as caught:
            main(command)
        assert "refusing to start" in str(caught.value) and "farm-first" in str(caught.value), command


def test_up_moves_its_broker_and_storage_off_another_farms_ports(
    fresh_broker_url: str, own_bucket: S3Settings, tmp_path: Path
) -> None:
    settings = make_settings("sqlite:///:memory:", fresh_broker_url, own_bucket, tmp_path).model_copy(
        update={"farm_id": "farm-me"}
    )
    # Nobody owns them yet, or this farm does: used as they are.
    assert place_services(settings, tmp_path, "farm-me") == (settings, [])
    identity.claim(settings, "farm-me")
    assert place_services(settings, tmp_path, "farm-me") == (settings, [])
    # Another farm's: this farm runs its own on free ports, and every command on its data dir finds them.
    redis.Redis.from_url(settings.broker_url).set(identity.OWNER_KEY, "farm-other")
    Storage.from_settings(settings).put(identity.OWNER_OBJECT, b"farm-other\n")
    moved, notes = place_services(settings, tmp_path, "farm-me")
    assert moved.broker_url != settings.broker_url and moved.s3_endpoint_url != settings.s3_endpoint_url
    assert moved.broker_url.endswith("/" + settings.broker_url.rsplit("/", 1)[1])  # the same database number
    assert len(notes) == 2 and all("farm-other" in note for note in notes)
    recorded = json.loads((tmp_path / ENDPOINTS_FILE).read_text())
    assert recorded["broker_url"] == [settings.broker_url, moved.broker_url]
    again = Settings(data_dir=tmp_path, broker_url=settings.broker_url, s3_endpoint_url=settings.s3_endpoint_url)
    assert (again.broker_url, again.s3_endpoint_url) == (moved.broker_url, moved.s3_endpoint_url)
    # A command that names another broker keeps it.
    assert Settings(data_dir=tmp_path, broker_url="redis://elsewhere:6379/0").broker_url == "redis://elsewhere:6379/0"
