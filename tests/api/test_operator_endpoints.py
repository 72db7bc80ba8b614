"""Operator endpoints are not public: /metrics answers an operator key or the metrics token only (401 without valid
credentials, 403 for a plain key); its figures and /readyz's checks are kept a few seconds per process, and the
queue depths are counted without scanning Redis's keyspace."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from flask import Flask
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from producer.app import create_app
from shared import tenants
from shared.config import Settings
from shared.db import transaction
from tests.support.fixtures import auth

TOKEN = "metrics-token-for-prometheus"


def operator_key(sessions: sessionmaker[Session]) -> str:
    with transaction(sessions) as session:
        _row, plaintext = tenants.create_key(session, "ops", role=tenants.OPERATOR)
    return plaintext


@contextmanager
def statements(app: Flask) -> Iterator[list[str]]:
    """The SQL statements the app's database engine runs inside the block."""
    engine = app.extensions["voicefarm"].sessions.kw["bind"]
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", count)


def test_metrics_answer_operators_only(farm_settings: Settings, sessions: sessionmaker[Session], api_key: str) -> None:
    client = create_app(farm_settings.model_copy(update={"metrics_token": TOKEN})).test_client()
    operator = operator_key(sessions)

    def status(headers: dict[str, str]) -> tuple[int, str]:
        response = client.get("/metrics", headers=headers)
        body = response.get_json(silent=True) or {}
        return response.status_code, body.get("error", {}).get("code", "")

    assert status({}) == (401, "missing_api_key")
    assert status({"Authorization": "Basic dXNlcjpwdw=="}) == (401, "missing_api_key")
    assert status(auth("vf_not_a_key")) == (401, "invalid_api_key")
    assert status(auth(TOKEN + "x")) == (401, "invalid_api_key")
    assert status(auth(api_key)) == (403, "operator_only")  # a tenant's plain key
    assert status(auth(operator))[0] == 200
    assert status(auth(TOKEN))[0] == 200
    page = client.get("/metrics", headers=auth(TOKEN))
    assert page.content_type.startswith("text/plain") and b"voicefarm_jobs" in page.data
    with transaction(sessions) as session:
        row = tenants.find_key(session, operator)
        assert row is not None
        tenants.revoke_key(session, row.id)
    assert status(auth(operator)) == (401, "invalid_api_key")
    # Without a token set, a bearer that is no key is just an unknown key.
    bare = create_app(farm_settings).test_client()
    assert bare.get("/metrics", headers=auth(TOKEN)).status_code == 401
    assert bare.get("/metrics", headers=auth("")).status_code == 401


def test_the_figures_are_computed_once_per_ttl(farm_settings: Settings) -> None:
    app = create_app(farm_settings.model_copy(update={"metrics_token": TOKEN, "metrics_cache_s": 1.0}))
    client = app.test_client()
    with statements(app) as first:
        one = client.get("/metrics", headers=auth(TOKEN)).data
    with statements(app) as second:
        two = client.get("/metrics", headers=auth(TOKEN)).data
    assert first and second == [] and one == two  # the second scrape, within the TTL, ran no query
    time.sleep(1.1)
    with statements(app) as third:
        client.get("/metrics", headers=auth(TOKEN))
    assert len(third) == len(first)  # past the TTL: computed afresh


def test_queue_depths_are_counted_without_a_scan(farm_settings: Settings) -> None:
    client = create_app(farm_settings.model_copy(update={"metrics_token": TOKEN, "metrics_cache_s": 0})).test_client()
    broker = redis.Redis.from_url(farm_settings.broker_url)
    for n in range(50):  # keys that a scan would walk
        broker.set(f"unrelated:{n}", 1)
    before = broker.info("commandstats")
    page = client.get("/metrics", headers=auth(TOKEN)).get_data(as_text=True)
    after = broker.info("commandstats")
    calls = {k: after[k]["calls"] - before.get(k, {"calls": 0})["calls"] for k in after}
    assert calls.get("cmdstat_scan", 0) == 0 and calls.get("cmdstat_keys", 0) == 0, calls
    assert 'voicefarm_queue_depth{queue="engine.kokoro"} 0.0' in page
    assert 'voicefarm_queue_depth{queue="webhooks"} 0.0' in page


def test_readiness_is_cheap_to_ask_often(farm_settings: Settings) -> None:
    app = create_app(farm_settings.model_copy(update={"metrics_cache_s": 5.0}))
    client = app.test_client()
    with statements(app) as first:
        one = client.get("/readyz")
    with statements(app) as second:
        two = client.get("/readyz")
    assert first and second == []
    assert (one.status_code, one.get_json()) == (two.status_code, two.get_json()) and one.status_code == 503
