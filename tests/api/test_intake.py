"""The HTTP edge against a hostile client, in process on real PostgreSQL and Redis: each endpoint's body cap
(checked before a byte is read, chunked bodies too), the key checked before the body, JSON nested too deep, batch
bodies read as streams with a line cap, failed authentications limited per address (and only valid keys counted
per key), and the admission of synchronous speech streams. The same against real gunicorn processes:
tests/farm/test_isolation.py."""

from __future__ import annotations

import io
import json
import socket
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

import producer.api.speech
import shared.batches.reader
import shared.jsonbody
from producer.app import create_app
from producer.limits import STREAM_PREFIX, StreamSlots
from shared.config import Settings
from shared.db import transaction
from shared.engines import catalogue
from shared.engines import fleet as fleet_rows
from shared.errors import TooManyRequests, Unavailable
from shared.keys import hash_key
from shared.models import ApiKey, Job
from tests.support.fixtures import auth

MiB = 1024 * 1024
DEEP = "[" * 5000 + "]" * 5000
SPEECH = {"model": "tts-1", "voice": "alloy", "input": "Hello there."}


def client_with(settings: Settings, **overrides: object) -> FlaskClient:
    return create_app(settings.model_copy(update=overrides)).test_client()


def spy(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[int]:
    calls: list[int] = []
    real = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


def tenant_of(sessions: sessionmaker[Session], key: str) -> str:
    with sessions() as session:
        tenant = session.scalar(select(ApiKey.tenant_id).where(ApiKey.key_hash == hash_key(key)))
        assert tenant is not None
        return tenant


def jobs_of(sessions: sessionmaker[Session]) -> list[Job]:
    with sessions() as session:
        return list(session.scalars(select(Job)))


def register_idle_worker(sessions: sessionmaker[Session]) -> None:
    """A live kokoro worker row with no process behind it: the API queues speech jobs nobody takes."""
    with transaction(sessions) as session:
        fleet_rows.register_worker(
            session,
            "idle-kokoro",
            engine="kokoro",
            model="none",
            capabilities=catalogue("kokoro").capabilities.to_json(),
            device="cpu",
        )


# -- body caps and the order of checks ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path", "size", "code"),
    [
        ("post", "/v1/audio/speech", 64 * 1024 + 1, "body_too_large"),
        ("put", "/v1/lexicon/en/word", 64 * 1024 + 1, "body_too_large"),
        ("post", "/v1/jobs/nope/cancel", 64 * 1024 + 1, "body_too_large"),
        ("post", "/v1/jobs", 5000 * 12 + 64 * 1024 + 1, "body_too_large"),
        ("post", "/v1/batches", 32 * MiB + 1, "batch_body_too_large"),
    ],
)
@pytest.mark.parametrize("keyed", [True, False], ids=["key", "anonymous"])
def test_a_body_over_its_endpoints_cap_is_refused_unread(
    client: FlaskClient,
    api_key: str,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    path: str,
    size: int,
    code: str,
    keyed: bool,
) -> None:
    parsed = spy(monkeypatch, shared.jsonbody, "loads")
    body = b"x" * size
    started = time.perf_counter()
    headers = (auth(api_key) if keyed else {}) | {"Content-Type": "application/json"}
    response = getattr(client, method)(path, data=body, headers=headers)
    elapsed = time.perf_counter() - started
    assert parsed == [] and elapsed < 1.0  # before the test reads the answer, which parses JSON itself
    assert (response.status_code, response.get_json()["error"]["code"]) == (413, code)


def test_a_chunked_body_is_read_no_further_than_the_cap(client: FlaskClient, api_key: str) -> None:
    """No Content-Length (the server says the stream ends by itself): reading stops at the cap with a 413."""
    read: list[int] = []

    class Endless(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            read.append(len(buffer))
            buffer[:] = b" " * len(buffer)
            return len(buffer)

    response = client.post(
        "/v1/audio/speech",
        headers=auth(api_key) | {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input": Endless(), "wsgi.input_terminated": True},
    )
    assert (response.status_code, response.get_json()["error"]["code"]) == (413, "payload_too_large")
    assert "65536" in response.get_json()["error"]["message"]
    assert sum(read) < 1 * MiB


@pytest.mark.parametrize(
    ("path", "body", "content_type"),
    [
        ("/v1/audio/speech", json.dumps(SPEECH).encode(), "application/json"),
        ("/v1/jobs", b'{"text": "Hello."}', "application/json"),
        ("/v1/batches", b'{"lines": [' + b"{}," * 300_000 + b"{}]}", "application/json"),
        ("/v1/batches", b"text\n" + b"a\n" * 300_000, "text/csv"),
        ("/v1/batches", b"{}\n" * 300_000, "application/jsonl"),
    ],
    ids=["speech", "jobs", "batch-json", "batch-csv", "batch-jsonl"],
)
@pytest.mark.parametrize("bearer", ["", "Bearer vf_not-a-key"], ids=["no-key", "unknown-key"])
def test_the_key_is_checked_before_the_body_is_read(
    client: FlaskClient,
    monkeypatch: pytest.MonkeyPatch,
    sessions: sessionmaker[Session],
    path: str,
    body: bytes,
    content_type: str,
    bearer: str,
) -> None:
    parsed = spy(monkeypatch, shared.jsonbody, "loads")
    streamed = [spy(monkeypatch, shared.batches.reader, name) for name in ("read_json", "read_csv", "read_jsonl")]
    response = client.post(path, data=body, headers={"Authorization": bearer, "Content-Type": content_type})
    assert parsed == [] and all(calls == [] for calls in streamed)
    assert response.status_code == 401, response.get_json()
    assert jobs_of(sessions) == []


# -- JSON nested too deep ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path", "body", "content_type"),
    [
        ("post", "/v1/audio/speech", DEEP, "application/json"),
        ("post", "/v1/audio/speech", '{"model": "tts-1", "voice": ' + DEEP + "}", "application/json"),
        ("post", "/v1/jobs", '{"text": "hi", "lexicon": ' + DEEP + "}", "application/json"),
        ("put", "/v1/lexicon/en/word", DEEP, "application/json"),
        ("post", "/v1/batches", '{"lines": [' + DEEP + "]}", "application/json"),
        ("post", "/v1/batches", '{"lines": [], "defaults": ' + DEEP + "}", "application/json"),
        # Exactly one level too deep: 64 is the limit, the outer object counts.
        ("post", "/v1/jobs", '{"text": "hi", "x": ' + "[" * 64 + "]" * 64 + "}", "application/json"),
    ],
    ids=["speech", "speech-field", "jobs", "lexicon", "batch-line", "batch-defaults", "jobs-65-levels"],
)
def test_deep_json_is_invalid_json_never_a_500(
    client: FlaskClient, api_key: str, sessions: sessionmaker[Session], method: str, path: str, body: str,
    content_type: str,
) -> None:  # fmt: skip
    response = getattr(client, method)(path, data=body, headers=auth(api_key) | {"Content-Type": content_type})
    assert (response.status_code, response.get_json()["error"]["code"]) == (400, "invalid_json"), response.get_json()
    assert "nested deeper than 64" in response.get_json()["error"]["message"]
    # Without a key the body is never read: 401, not 400 and never a 500.
    anonymous = getattr(client, method)(path, data=body, headers={"Content-Type": content_type})
    assert anonymous.status_code == 401
    assert jobs_of(sessions) == []


def test_deep_json_in_a_jsonl_batch_is_reported_per_line(client: FlaskClient, api_key: str) -> None:
    body = '{"text": "fine"}\n' + '{"text": "x", "lexicon": ' + DEEP + "}\n"
    response = client.post("/v1/batches", data=body, headers=auth(api_key) | {"Content-Type": "application/jsonl"})
    assert response.status_code == 422
    problems = response.get_json()["error"]["lines"]
    assert [(p["line"], p["code"]) for p in problems] == [(2, "invalid_json")]


def test_json_at_the_depth_limit_is_parsed() -> None:
    assert shared.jsonbody.loads("[" * 64 + "]" * 64) is not None
    assert shared.jsonbody.loads('{"a": "[[[[[[[[ not brackets ]"}') == {"a": "[[[[[[[[ not brackets ]"}
    with pytest.raises(ValueError):
        shared.jsonbody.loads("[" * 65 + "]" * 65)
    with pytest.raises(ValueError):
        shared.jsonbody.loads("[" * 200_000)


# -- batches read as streams -------------------------------------------------------------------------------------
def _peak_while(call: Callable[[], Any]) -> tuple[Any, float, int]:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        result = call()
    finally:
        elapsed = time.perf_counter() - started
        _current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return result, elapsed, peak


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"lines": [' + b"{}," * 7_000_000 + b"{}]}", "application/json"),
        (b"{}\n" * 7_000_000, "application/jsonl"),
        (b"text\n" + b"a\n" * 11_000_000, "text/csv"),
    ],
    ids=["json", "jsonl", "csv"],
)
def test_a_batch_of_millions_of_tiny_lines_stops_at_the_line_cap(
    client: FlaskClient, api_key: str, sessions: sessionmaker[Session], body: bytes, content_type: str
) -> None:
    """The issue's `[{},{},...]`: 20 MiB parsed whole was 7 million dicts (over 500 MB); read as a stream it is
    refused at line 10,001, holding no more than the lines allowed."""
    assert len(body) > 20 * MiB
    response, elapsed, peak = _peak_while(
        lambda: client.post("/v1/batches", data=body, headers=auth(api_key) | {"Content-Type": content_type})
    )
    print(f"batch {content_type} {len(body) / MiB:.0f} MiB: {response.status_code} in {elapsed:.2f} s, "
          f"peak {peak / MiB:.1f} MiB traced")  # fmt: skip
    assert (response.status_code, response.get_json()["error"]["code"]) == (413, "batch_too_large")
    assert "max_batch_lines=10000" in response.get_json()["error"]["message"]
    assert peak < 50 * MiB
    assert jobs_of(sessions) == []


def test_a_batch_line_over_the_text_limit_is_refused_before_it_is_parsed(client: FlaskClient, api_key: str) -> None:
    huge = b'{"lines": [{"text": "' + b"a" * (2 * MiB) + b'"}]}'
    response = client.post("/v1/batches", data=huge, headers=auth(api_key) | {"Content-Type": "application/json"})
    assert (response.status_code, response.get_json()["error"]["code"]) == (413, "batch_too_large")


def test_streamed_json_batches_read_as_before(
    client: FlaskClient, api_key: str, sessions: sessionmaker[Session]
) -> None:
    body = {
        "name": "streamed",
        "defaults": {"seed": 4},
        "lines": [{"id": f"l{i}", "text": f"Line {i}."} for i in range(300)],
    }
    response = client.post("/v1/batches", json=body, headers=auth(api_key))
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["lines"] == 300 and response.get_json()["name"] == "streamed"
    for bad, code in (
        ({"lines": "x"}, "invalid_json"),
        ({"lines": [{"text": "a"}], "extra": 1}, "invalid_request"),
        ([{"text": "a"}], "invalid_json"),
    ):
        answer = client.post("/v1/batches", json=bad, headers=auth(api_key))
        assert (answer.status_code, answer.get_json()["error"]["code"]) == (400, code), bad


# -- failed authentications per address; the per-key rate counts valid keys only ---------------------------------
def _keys(broker_url: str) -> set[bytes]:
    client = redis.Redis.from_url(broker_url)
    try:
        return set(client.scan_iter("*", count=1000))
    finally:
        client.close()


def test_random_bearers_get_429_and_create_nothing_per_bearer(
    farm_settings: Settings, api_key: str, sessions: sessionmaker[Session]
) -> None:
    client = client_with(farm_settings, auth_failures_per_minute=20)
    before = _keys(farm_settings.broker_url)
    codes = [
        client.get("/v1/jobs", headers={"Authorization": f"Bearer vf_random{i:04d}"}).status_code for i in range(50)
    ]
    # 50 requests span at most two one-minute windows, so one of them saw more than 20 failures.
    assert codes.count(429) >= 5 and set(codes) == {401, 429}, codes
    refused = client.get("/v1/jobs", headers={"Authorization": "Bearer vf_random-last"})
    if refused.status_code == 429:
        assert refused.get_json()["error"]["code"] == "too_many_auth_failures"
        assert 1 <= int(refused.headers["Retry-After"]) <= 61
    created = _keys(farm_settings.broker_url) - before
    assert all(key.startswith(b"voicefarm:authfail:127.0.0.1:") for key in created), created
    assert 1 <= len(created) <= 2  # one per address and minute
    # Refused before any key is looked up: a valid key from that address waits out the minute too.
    if refused.status_code == 429:
        assert client.get("/v1/jobs", headers=auth(api_key)).status_code == 429
    # Another address is not affected.
    other = client.get("/v1/jobs", headers=auth(api_key), environ_base={"REMOTE_ADDR": "198.51.100.9"})
    assert other.status_code == 200


def test_the_per_key_rate_counts_valid_keys_only(farm_settings: Settings, api_key: str) -> None:
    client = client_with(farm_settings, rate_limit_per_minute=1000)
    before = _keys(farm_settings.broker_url)
    assert client.get("/v1/jobs", headers={"Authorization": "Bearer vf_nobody"}).status_code == 401
    assert not any(b"rate" in key for key in _keys(farm_settings.broker_url) - before)
    assert client.get("/v1/jobs", headers=auth(api_key)).status_code == 200
    rate_keys = [key for key in _keys(farm_settings.broker_url) - before if b"rate" in key]
    assert len(rate_keys) == 1 and hash_key(api_key).encode() in rate_keys[0], rate_keys


def test_the_address_comes_from_x_forwarded_for_only_behind_a_trusted_proxy(farm_settings: Settings) -> None:
    hops = {"X-Forwarded-For": "192.0.2.1, 203.0.113.7", "Authorization": "Bearer vf_nobody"}
    for trusted, expected in (
        ([], "127.0.0.1"),
        (["127.0.0.0/8"], "203.0.113.7"),
        (["127.0.0.1", "203.0.113.7"], "192.0.2.1"),
    ):
        client = client_with(farm_settings, trusted_proxies=trusted)
        before = _keys(farm_settings.broker_url)
        assert client.get("/v1/jobs", headers=hops).status_code == 401
        created = _keys(farm_settings.broker_url) - before
        assert [key.split(b":")[2] for key in created] == [expected.encode()], (trusted, created)
        redis.Redis.from_url(farm_settings.broker_url).flushdb()


# -- synchronous speech streams ----------------------------------------------------------------------------------
def test_stream_slots_per_tenant_and_per_process(fresh_broker_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    client = redis.Redis.from_url(fresh_broker_url)
    slots = StreamSlots(client, per_process=6, per_tenant=2)
    a1, a2 = slots.acquire("tenant-a"), slots.acquire("tenant-a")
    with pytest.raises(TooManyRequests) as refused:
        slots.acquire("tenant-a")
    assert refused.value.code == "too_many_streams"
    b = [slots.acquire("tenant-b"), slots.acquire("tenant-b")]  # another tenant has its own cap
    a1.release()
    a1.release()  # idempotent: the slot is freed once
    a3 = slots.acquire("tenant-a")
    c = [slots.acquire("tenant-c"), slots.acquire("tenant-c")]
    with pytest.raises(Unavailable) as busy:  # six open in this process: the rest of its threads are kept
        slots.acquire("tenant-d")
    assert busy.value.code == "server_busy"
    for slot in (a2, a3, *b, *c):
        slot.release()
    assert client.zcard(STREAM_PREFIX + "tenant-a") == 0


def test_a_crashed_process_cannot_leak_a_tenants_stream_slots(
    fresh_broker_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("producer.limits.STREAM_LEASE_S", 1.0)
    client = redis.Redis.from_url(fresh_broker_url)
    dead = StreamSlots(client, per_process=4, per_tenant=1)
    dead.acquire("tenant-a")  # never released nor renewed: its process died
    alive = StreamSlots(client, per_process=4, per_tenant=1)
    with pytest.raises(TooManyRequests):
        alive.acquire("tenant-a")
    time.sleep(1.2)
    alive.acquire("tenant-a").release()


def test_speech_waits_for_a_worker_at_most_the_start_wait_then_cancels(
    farm_settings: Settings, api_key: str, sessions: sessionmaker[Session]
) -> None:
    register_idle_worker(sessions)
    client = client_with(farm_settings, speech_start_wait_s=1.0)
    started = time.perf_counter()
    response = client.post("/v1/audio/speech", json=SPEECH, headers=auth(api_key))
    elapsed = time.perf_counter() - started
    error = response.get_json()["error"]
    assert (response.status_code, error["code"]) == (503, "workers_busy"), error
    assert response.headers["Retry-After"] == "5" and 1.0 <= elapsed < 5.0
    [job] = jobs_of(sessions)
    assert job.id == error["job_id"] and job.status == "canceled"
    # Its slot was given back: the tenant may open a stream again at once.
    again = client.post("/v1/audio/speech", json=SPEECH, headers=auth(api_key))
    assert again.get_json()["error"]["code"] == "workers_busy"


def test_speech_past_the_tenants_stream_cap_is_429_before_the_body_is_read(
    farm_settings: Settings,
    api_key: str,
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    register_idle_worker(sessions)
    client = client_with(farm_settings, max_streams_per_tenant=2)
    held = StreamSlots(redis.Redis.from_url(farm_settings.broker_url), per_process=4, per_tenant=2)
    open_now = [held.acquire(tenant_of(sessions, api_key)) for _ in range(2)]
    parsed = spy(monkeypatch, shared.jsonbody, "loads")
    response = client.post("/v1/audio/speech", json=SPEECH, headers=auth(api_key))
    assert parsed == []
    assert (response.status_code, response.get_json()["error"]["code"]) == (429, "too_many_streams")
    assert int(response.headers["Retry-After"]) >= 1 and jobs_of(sessions) == []
    for slot in open_now:
        slot.release()


def test_refused_speech_requests_give_their_slots_back(farm_settings: Settings, api_key: str) -> None:
    """No worker starts it (503 workers_busy), a bad body (400): each frees its slot, so a cap of one never fills."""
    app: Flask = create_app(farm_settings.model_copy(update={"max_streams_per_tenant": 1, "speech_start_wait_s": 0.2}))
    client = app.test_client()
    for _ in range(3):
        assert client.post("/v1/audio/speech", json=SPEECH, headers=auth(api_key)).status_code == 503
        assert client.post("/v1/audio/speech", json={"model": 1}, headers=auth(api_key)).status_code == 400
    slots: StreamSlots = app.extensions["voicefarm.stream_slots"]
    assert slots.client.zcard(STREAM_PREFIX + "x") == 0
    assert all(slots._local.acquire(blocking=False) for _ in range(slots.per_process))


def test_client_gone_sees_a_closed_connection_without_reading() -> None:
    server, peer = socket.socketpair()
    try:
        assert not producer.api.speech.client_gone(server)
        peer.sendall(b"GET / HTTP/1.1\r\n")  # a pipelined request is not a departure, and is left unread
        assert not producer.api.speech.client_gone(server)
        assert server.recv(64) == b"GET / HTTP/1.1\r\n"
        peer.close()
        assert producer.api.speech.client_gone(server)
        assert not producer.api.speech.client_gone(None)
    finally:
        server.close()


def test_settings_keep_threads_for_the_rest_of_the_api(farm_settings: Settings) -> None:
    with pytest.raises(ValueError, match="api_reserved_threads"):
        Settings(api_threads=4, api_reserved_threads=4)
    assert Settings().api_threads - Settings().api_reserved_threads == 12


def test_counts_nothing_when_no_body_is_sent(
    client: FlaskClient, api_key: str, sessions: sessionmaker[Session]
) -> None:
    """GETs and bodiless POSTs pass the cap untouched."""
    assert client.get("/healthz").status_code == 200
    assert client.get("/v1/jobs", headers=auth(api_key)).status_code == 200
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0
