"""Join tokens and POST /v1/join (shared/engines/join.py, producer/api/join.py): a token is made, listed, revoked
and expires by the database's clock; the answer names the services the farm published for workers, with their
credentials and the farm-wide settings, never an API key; anything but a live join token is refused."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.db import transaction
from shared.engines import join
from shared.errors import Unauthorized
from tests.support.fixtures import auth

PUBLISHED = {
    "database_url": "postgresql://voicefarm_worker:pw@198.18.0.1:5432/voicefarm",
    "broker_url": "redis://worker:pw@198.18.0.1:6379/0",
    "s3_endpoint_url": "http://198.18.0.1:8333",
    "s3_access_key": "vfwkey",
    "s3_secret_key": "vfwsecret",
    "s3_bucket": "voicefarm",
    "s3_region": "us-east-1",
}


def publish(data_dir: Path) -> None:
    (data_dir / join.JOIN_FILE).write_text(json.dumps(PUBLISHED))


def new_token(sessions: sessionmaker[Session], **options: object) -> str:
    with transaction(sessions) as session:
        _view, token = join.create_token(session, **options)  # type: ignore[arg-type]
    return token


def test_tokens_are_listed_revoked_and_expire(sessions: sessionmaker[Session]) -> None:
    with transaction(sessions) as session:
        kept, kept_token = join.create_token(session, name="gpu-box-2")
        short, short_token = join.create_token(session, name="short", expires_in=timedelta(seconds=1))
    assert kept_token.startswith(join.TOKEN_PREFIX) and kept.expires_at is None
    assert short.expires_at is not None and short.expires_at - short.created_at == timedelta(seconds=1)
    with transaction(sessions) as session:
        listed = join.list_tokens(session)
        # Only digests are stored: the token itself is nowhere in the table.
        assert all(kept_token not in repr(view) for view in listed)
        assert [v.name for v in listed] == ["gpu-box-2", "short"] and listed[0].label == kept_token[:10] + "…"
        assert join.use_token(session, kept_token).uses == 1
    time.sleep(1.2)
    with transaction(sessions) as session:
        try:
            join.use_token(session, short_token)
            raise AssertionError("an expired token was taken")
        except Unauthorized as exc:
            assert exc.code == "invalid_join_token"
        join.revoke_token(session, kept.id[:8])
    with transaction(sessions) as session:
        assert [v.name for v in join.list_tokens(session)] == ["short"]
        assert {v.name: v.state for v in join.list_tokens(session, include_revoked=True)} == {
            "gpu-box-2": "revoked",
            "short": "active",
        }


def test_join_answers_what_a_worker_needs_and_no_api_key(
    client: FlaskClient, sessions: sessionmaker[Session], farm_settings: Settings, api_key: str
) -> None:
    publish(farm_settings.data_dir)
    token = new_token(sessions, name="w1")
    response = client.post("/v1/join", headers=auth(token))
    assert response.status_code == 200, response.get_data(as_text=True)
    answer = response.get_json()
    assert response.headers["Cache-Control"] == "no-store"
    for name, value in PUBLISHED.items():
        assert answer["settings"][name] == value
    assert answer["settings"]["job_lease_s"] == farm_settings.job_lease_s
    assert answer["defaults"] == {"engine": farm_settings.engine}
    assert answer["token"]["name"] == "w1"
    body = response.get_data(as_text=True)
    assert api_key not in body and '"vf_' not in body
    with transaction(sessions) as session:
        assert join.list_tokens(session)[0].uses == 1


def test_join_refuses_anything_but_a_live_join_token(
    client: FlaskClient, sessions: sessionmaker[Session], farm_settings: Settings, api_key: str
) -> None:
    publish(farm_settings.data_dir)
    assert client.post("/v1/join").status_code == 401
    answer = client.post("/v1/join", headers=auth(api_key))  # an API key is no join token
    assert answer.status_code == 401 and answer.get_json()["error"]["code"] == "invalid_join_token"
    token = new_token(sessions)
    with transaction(sessions) as session:
        join.revoke_token(session, join.list_tokens(session)[0].id)
    assert client.post("/v1/join", headers=auth(token)).status_code == 401


def test_a_farm_that_publishes_nothing_answers_join_disabled(
    client: FlaskClient, sessions: sessionmaker[Session]
) -> None:
    answer = client.post("/v1/join", headers=auth(new_token(sessions)))
    assert answer.status_code == 404 and answer.get_json()["error"]["code"] == "join_disabled"
