"""Webhooks: target checks (SSRF), signed deliveries to the checked address, every attempt recorded and capped.

Receivers are real HTTP(S) servers on loopback; the resolver is the one input replaced, so a test can make a name
answer a public address first and loopback second, or an IPv6 translation form, which no local DNS would do.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from producer.app import create_app
from shared import tenants
from shared.config import Settings
from shared.db import make_engine, make_session_factory, transaction
from shared.errors import BadRequest
from shared.jobs import state as jobs
from shared.models import Batch, Job, WebhookDelivery, utcnow
from shared.queue import enqueue_webhook, make_celery
from shared.reconcile import Reconciler
from shared.secrets import SecretBox, is_sealed
from shared.storage import Storage
from shared.webhooks import deliveries, targets
from shared.webhooks.targets import check_webhook_url, resolve_target
from tests.conftest import S3Settings
from tests.support.batches import finish_like_a_worker
from tests.support.fixtures import auth, make_settings
from worker.finisher import attempt_key
from worker.webhooks.app import WebhookContext
from worker.webhooks.deliver import WebhookFailed, deliver_batch_webhook, deliver_webhook

ROOT = Path(__file__).resolve().parents[2]
PUBLIC = "93.184.215.14"  # any globally routable address; nothing is ever sent to it


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes
    sni: str | None = None


class Receiver:
    """A webhook receiver on 127.0.0.1 that answers the given statuses in turn (the last one repeats)."""

    def __init__(
        self, statuses: tuple[int, ...] = (200,), *, delay_s: float = 0.0, location: str | None = None, tls: Any = None
    ):
        self.received: list[Seen] = []
        self.sni: list[str | None] = []
        receiver, answers = self, list(statuses)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append(Seen(self.path, dict(self.headers.items()), body))
                time.sleep(delay_s)
                status = answers.pop(0) if len(answers) > 1 else answers[0]
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_port
        scheme = "http"
        if tls is not None:
            tls.sni_callback = lambda _sock, name, _ctx: self.sni.append(name)
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    opened: list[Receiver] = []
    yield opened
    for r in opened:
        r.close()


def start(opened: list[Receiver], *args: Any, **kwargs: Any) -> Receiver:
    r = Receiver(*args, **kwargs)
    opened.append(r)
    return r


def resolver(mapping: dict[str, list[str]], calls: list[str] | None = None) -> Any:
    def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        return mapping.get(host, [host])

    return resolve


@dataclass
class Key:
    tenant_id: str
    key_id: str
    plaintext: str
    secret: str


@pytest.fixture
def key(sessions: sessionmaker[Session]) -> Key:
    with transaction(sessions) as session:
        row, plaintext = tenants.create_key(session, "hooks")
        return Key(row.tenant_id, row.id, plaintext, row.webhook_secret)


def finished_job(sessions: sessionmaker[Session], key: Key, url: str, status: str = "succeeded") -> str:
    """A job row that has reached a final state, as the worker leaves it."""
    with transaction(sessions) as session:
        job = Job(
            tenant_id=key.tenant_id,
            api_key_id=key.key_id,
            engine="kokoro",
            text="Done.",
            voice="af_heart",
            mode="clone",
            language="en",
            status=status,
            finished_at=utcnow(),
            webhook_url=url,
            result={"key": "jobs/x/y.wav", "format": "wav", "sha256": "0" * 64} if status == "succeeded" else None,
            error_code="engine_error" if status == "failed" else None,
        )
        session.add(job)
        session.flush()
        return job.id


def attempts(sessions: sessionmaker[Session], job_id: str) -> list[Any]:
    with sessions() as session:
        return deliveries.deliveries(session, Job, job_id)


def ctx_for(settings: Settings, **overrides: Any) -> WebhookContext:
    return WebhookContext.build(settings.model_copy(update=overrides))


# --- targets ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("ftp://example.com/x", "invalid_webhook_url"),
        ("http:///nohost", "invalid_webhook_url"),
        ("http://user:pw@example.com/", "invalid_webhook_url"),
        ("http://exa mple.com/", "invalid_webhook_url"),
        ("http://example.com/a b", "invalid_webhook_url"),
        ("http://example.com/\r\nX-Injected: 1", "invalid_webhook_url"),
        ("http://example.com:99999/", "invalid_webhook_url"),
        ("http://ex_ample..com/", "invalid_webhook_url"),
        ("http://[fe80::1%25eth0]/", "invalid_webhook_url"),
        ("http://127.0.0.1:9/", "webhook_forbidden"),
        ("http://localhost/", "webhook_forbidden"),
        ("http://2130706433/", "webhook_forbidden"),  # 127.0.0.1 written as one number
        ("http://0.0.0.0/", "webhook_forbidden"),
        ("http://10.1.2.3/", "webhook_forbidden"),
        ("http://169.254.169.254/latest/meta-data/", "webhook_forbidden"),
        ("http://[::1]/", "webhook_forbidden"),
        ("http://[::ffff:127.0.0.1]/", "webhook_forbidden"),
        ("http://[::ffff:169.254.169.254]/", "webhook_forbidden"),
        ("http://[64:ff9b::7f00:1]/", "webhook_forbidden"),  # NAT64 of 127.0.0.1
        ("http://[64:ff9b:1::a00:1]/", "webhook_forbidden"),  # local-use NAT64
        ("http://[2002:7f00:1::1]/", "webhook_forbidden"),  # 6to4
        ("http://[::7f00:1]/", "webhook_forbidden"),  # IPv4-compatible
        ("http://[::127.0.0.1]/", "webhook_forbidden"),
        ("http://[fd00::1]/", "webhook_forbidden"),  # unique-local
        ("http://[fe80::1]/", "webhook_forbidden"),  # link-local
        ("http://no-such-host.invalid/", "webhook_unresolvable"),
    ],
)
def test_unsafe_targets_are_refused(url: str, code: str) -> None:
    with pytest.raises(BadRequest) as caught:
        check_webhook_url(url, Settings())
    assert caught.value.code == code, caught.value.message


def test_one_bad_address_among_good_ones_refuses_the_host() -> None:
    answers = resolver({"hooks.example.test": [PUBLIC, "127.0.0.1"]})
    with pytest.raises(BadRequest) as caught:
        resolve_target("https://hooks.example.test/in", Settings(), answers)
    assert caught.value.code == "webhook_forbidden" and "'hooks.example.test'" in caught.value.message
    assert "127.0.0.1" not in caught.value.message  # the host and the rule, never what it resolved to
    # The same public address alone is a fine target.
    target = resolve_target("https://hooks.example.test/in", Settings(), resolver({"hooks.example.test": [PUBLIC]}))
    assert target.addresses == (PUBLIC,) and target.host_header == "hooks.example.test"


@pytest.mark.parametrize(
    ("address", "form"),
    [
        ("64:ff9b::5db8:d70e", "NAT64"),  # translates to the public address: still refused
        ("64:ff9b:1::a00:1", "NAT64"),
        ("2002:5db8:d70e::1", "6to4"),
        ("::5db8:d70e", "IPv4-compatible"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ],
)
def test_ipv6_translation_forms_are_refused_even_on_a_trusted_network(address: str, form: str) -> None:
    trusting = Settings(webhook_allow_private=True)
    with pytest.raises(BadRequest) as caught:
        resolve_target("http://hooks.example.test/", trusting, resolver({"hooks.example.test": [PUBLIC, address]}))
    assert caught.value.code == "webhook_forbidden" and form in caught.value.message


def test_ipv4_mapped_addresses_are_judged_by_the_ipv4_inside() -> None:
    mapped = resolver({"pub.example.test": [f"::ffff:{PUBLIC}"], "lan.example.test": ["::ffff:10.0.0.7"]})
    assert resolve_target("http://pub.example.test/", Settings(), mapped).addresses == (PUBLIC,)
    with pytest.raises(BadRequest, match="lan.example.test") as caught:
        resolve_target("http://lan.example.test/", Settings(), mapped)
    assert "10.0.0.7" not in caught.value.message


def test_non_ascii_hosts_are_idna_encoded_and_paths_percent_encoded() -> None:
    calls: list[str] = []
    target = resolve_target(
        "https://bücher.example.test/päth/ü?q=ß&x=1",
        Settings(),
        resolver({"xn--bcher-kva.example.test": [PUBLIC]}, calls),
    )
    assert calls == ["xn--bcher-kva.example.test"]
    assert target.host == "xn--bcher-kva.example.test" and target.path == "/p%C3%A4th/%C3%BC?q=%C3%9F&x=1"


def test_the_farms_own_services_are_refused_even_on_a_trusted_network(farm_settings: Settings) -> None:
    (farm_settings.data_dir / "s3").mkdir()
    (farm_settings.data_dir / "s3" / "ports.json").write_text(json.dumps({"master": 45931, "volume_grpc": 45932}))
    trusting = farm_settings.model_copy(update={"webhook_allow_private": True})
    own = [
        trusting.broker_url.replace("redis://", "http://"),
        trusting.s3_endpoint_url,
        f"http://127.0.0.1:{trusting.port}/",
        "http://127.0.0.1:45931/",  # the embedded SeaweedFS master, from ports.json
        "http://127.0.0.1:45932/",
        "http://127.0.0.1:9333/",  # SeaweedFS defaults: master, volume, filer
        "http://127.0.0.1:9340/",
        "http://[::1]:8888/",
        "http://10.0.0.5:19333/",
    ]
    for url in own:
        with pytest.raises(BadRequest) as caught:
            check_webhook_url(url, trusting)
        assert caught.value.code == "webhook_forbidden", url
    assert check_webhook_url("http://127.0.0.1:1/hook", trusting)
    # A public receiver may use any port, those of SeaweedFS's defaults included.
    assert resolve_target("http://hooks.example.test:8080/", trusting, resolver({"hooks.example.test": [PUBLIC]}))


@pytest.mark.parametrize(
    ("addresses", "allow_private", "rule"),
    [
        (["127.0.0.1"], False, "loopback or private"),
        (["::1"], False, "loopback or private"),
        ([PUBLIC, "10.20.30.40"], False, "loopback or private"),
        (["::ffff:192.168.7.9"], False, "loopback or private"),
        (["169.254.169.254"], True, "link-local"),
        (["64:ff9b::a14:1e28"], True, "NAT64"),
        (["fd12:3456::78"], False, "loopback or private"),
        (["10.20.30.40"], True, "farm's own services"),  # port 5432: the database's
    ],
)
def test_refusals_name_the_host_and_rule_never_the_resolved_address(
    addresses: list[str], allow_private: bool, rule: str
) -> None:
    """What a name resolves to inside the farm's network is not the tenant's to learn: the API's answer and the
    delivery records say which host and which rule, and nothing of the address."""
    settings = Settings(webhook_allow_private=allow_private)
    with pytest.raises(BadRequest) as caught:
        check_webhook_url(
            "http://db.internal.example.test:5432/", settings, resolver({"db.internal.example.test": addresses})
        )
    message = caught.value.message
    assert caught.value.code == "webhook_forbidden" and rule in message
    assert "'db.internal.example.test'" in message
    for address in addresses:
        assert address not in message
    for leaked in ("10.20.30.40", "192.168.7.9", "169.254", "a14:1e28", "fd12", "127.0.0.1", "::1"):
        assert leaked not in message, message


def test_the_api_answer_does_not_echo_a_resolved_internal_address(
    farm_settings: Settings, key: Key, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(targets, "resolve_host", resolver({"intranet.example.test": ["10.9.8.7"]}))
    client = create_app(farm_settings).test_client()
    answer = client.post(
        "/v1/jobs", json={"text": "hi", "webhook_url": "http://intranet.example.test/x"}, headers=auth(key.plaintext)
    )
    assert answer.status_code == 400
    assert answer.get_json()["error"]["code"] == "webhook_forbidden"
    assert "10.9.8.7" not in answer.get_data(as_text=True) and "intranet.example.test" in answer.get_data(as_text=True)


def _in_transaction(database_url: str) -> int:
    """Other sessions of the test database inside a transaction now (pg_stat_activity)."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return int(
                conn.exec_driver_sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND xact_start IS NOT NULL"
                ).scalar_one()
            )
    finally:
        engine.dispose()


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/batches"])
def test_a_hanging_resolver_answers_503_in_time_and_holds_no_transaction(
    farm_settings: Settings, sessions: sessionmaker[Session], key: Key, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """`socket.getaddrinfo` has no timeout: a name server that never answers must neither hold a request past
    webhook_resolve_timeout_s nor keep a database transaction (and its connection) open while it is waited for."""
    release, seen = threading.Event(), []
    real = targets.resolve_host

    def hanging(host: str, port: int) -> list[str]:
        if host != "slow.example.test":
            return real(host, port)
        time.sleep(0.3)  # the request is waiting for this lookup now
        seen.append(_in_transaction(farm_settings.resolved_database_url()))
        release.wait(30)
        return [PUBLIC]

    monkeypatch.setattr(targets, "resolve_host", hanging)
    client = create_app(farm_settings.model_copy(update={"webhook_resolve_timeout_s": 1.0})).test_client()
    url = "https://slow.example.test/hook"
    body = (
        {"text": "Hello.", "webhook_url": url}
        if path == "/v1/jobs"
        else {"lines": [{"text": "Hi."}], "webhook_url": url}
    )
    try:
        started = time.monotonic()
        answer = client.post(path, json=body, headers=auth(key.plaintext))
        took = time.monotonic() - started
    finally:
        release.set()
    assert answer.status_code == 503, answer.get_json()
    assert answer.get_json()["error"]["code"] == "webhook_resolve_timeout"
    assert "slow.example.test" in answer.get_json()["error"]["message"] and answer.headers["Retry-After"]
    assert 0.9 < took < 1.8, took
    assert seen == [0]  # no transaction open anywhere on the database while the lookup hung
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == key.tenant_id)) == 0
        assert session.scalar(select(func.count()).select_from(Batch).where(Batch.tenant_id == key.tenant_id)) == 0


def test_a_resolver_answering_in_time_lets_the_submit_through(
    farm_settings: Settings, key: Key, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = targets.resolve_host
    monkeypatch.setattr(
        targets, "resolve_host", lambda host, port: [PUBLIC] if host == "hooks.example.test" else real(host, port)
    )
    client = create_app(farm_settings).test_client()
    answer = client.post(
        "/v1/jobs", json={"text": "Hello.", "webhook_url": "https://hooks.example.test/in"}, headers=auth(key.plaintext)
    )
    assert answer.status_code == 202, answer.get_json()
    assert answer.get_json()["webhook"]["url"] == "https://hooks.example.test/in"


def test_api_refuses_an_internal_webhook(farm_settings: Settings, key: Key) -> None:
    client = create_app(farm_settings).test_client()
    for url in ("http://127.0.0.1:5432/", "http://[64:ff9b::7f00:1]/", "http://exa mple.com/"):
        response = client.post("/v1/jobs", json={"text": "hi", "webhook_url": url}, headers=auth(key.plaintext))
        assert response.status_code == 400, url
        assert response.get_json()["error"]["code"] in ("webhook_forbidden", "invalid_webhook_url")


# --- deliveries -----------------------------------------------------------------------------------------------


def test_delivery_is_signed_and_verifiable_with_the_readme_snippet(
    farm_settings: Settings, sessions: sessionmaker[Session], key: Key, receivers: list[Receiver]
) -> None:
    receiver = start(receivers)
    ctx = ctx_for(farm_settings, webhook_allow_private=True)
    job_id = finished_job(sessions, key, receiver.url)
    assert deliver_webhook(ctx, job_id) == "delivered"
    assert deliver_webhook(ctx, job_id) == "skipped"  # delivered once, not again
    (seen,) = receiver.received
    # The secret as a client learns it, from the API.
    client = create_app(farm_settings).test_client()
    shown = client.get("/v1/webhook-secret", headers=auth(key.plaintext)).get_json()
    assert shown["secret"] == key.secret and shown["key_id"] == key.key_id
    verify = readme_verifier()
    assert verify(shown["secret"], seen.headers, seen.body)
    assert not verify(shown["secret"], seen.headers, seen.body + b" ")
    assert not verify("whsec_wrong", seen.headers, seen.body)
    event = json.loads(seen.body)
    assert event["event"] == "job.succeeded" and event["job"]["id"] == job_id
    assert event["id"] == seen.headers["Voicefarm-Event-Id"] == deliveries.event_id(job_id, "succeeded")
    assert seen.headers["Voicefarm-Delivery-Attempt"] == "1"
    (row,) = attempts(sessions, job_id)
    assert (row.attempt, row.status_code, row.error, row.address) == (1, 200, None, "127.0.0.1")
    assert row.url_host == "127.0.0.1" and row.finished_at is not None and row.duration_ms >= 0
    view = client.get(f"/v1/jobs/{job_id}", headers=auth(key.plaintext)).get_json()
    hook = view["webhook"]
    assert hook["attempts"] == 1 and hook["delivered_at"] and hook["gave_up_at"] is None and hook["error"] is None
    listed = client.get(f"/v1/jobs/{job_id}/webhook-deliveries", headers=auth(key.plaintext)).get_json()
    assert [d["status_code"] for d in listed["deliveries"]] == [200]
    # Rotation: the old secret no longer verifies what is signed next.
    rotated = client.post("/v1/webhook-secret/rotate", headers=auth(key.plaintext)).get_json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != key.secret


def test_a_secret_stored_encrypted_still_signs_what_the_receiver_verifies(
    farm_settings: Settings, sessions: sessionmaker[Session], receivers: list[Receiver]
) -> None:
    """The column holds a Fernet token, never the secret (shared/secrets.py); the webhook worker opens it to sign,
    and the receiver verifies with the secret the API shows."""
    box = SecretBox.from_settings(farm_settings)
    with transaction(sessions) as session:
        row, plaintext = tenants.create_key(session, "sealed-hooks", secrets=box)
        sealed = Key(row.tenant_id, row.id, plaintext, row.webhook_secret)
    client = create_app(farm_settings).test_client()
    secret = client.get("/v1/webhook-secret", headers=auth(plaintext)).get_json()["secret"]
    assert secret.startswith("whsec_") and secret not in sealed.secret and is_sealed(sealed.secret)
    receiver = start(receivers)
    ctx = ctx_for(farm_settings, webhook_allow_private=True)
    assert deliver_webhook(ctx, finished_job(sessions, sealed, receiver.url)) == "delivered"
    verify = readme_verifier()
    assert verify(secret, receiver.received[0].headers, receiver.received[0].body)
    rotated = client.post("/v1/webhook-secret/rotate", headers=auth(plaintext)).get_json()["secret"]
    assert deliver_webhook(ctx, finished_job(sessions, sealed, receiver.url)) == "delivered"
    assert verify(rotated, receiver.received[1].headers, receiver.received[1].body)
    assert not verify(secret, receiver.received[1].headers, receiver.received[1].body)
    # A webhook worker without the key cannot sign: the attempt fails (and is retried), nothing is sent.
    keyless = ctx_for(farm_settings, webhook_allow_private=True, secret_key="", data_dir=farm_settings.data_dir / "x")
    with pytest.raises(WebhookFailed):
        deliver_webhook(keyless, finished_job(sessions, sealed, receiver.url))
    assert len(receiver.received) == 2


def readme_verifier() -> Any:
    text = (ROOT / "docs" / "guide" / "webhooks.md").read_text()
    block = re.search(r"<!-- webhook-verify -->\s*```python\n(.*?)```\s*<!-- /webhook-verify -->", text, re.S)
    assert block is not None, "docs/guide/webhooks.md lost its webhook verification snippet"
    namespace: dict[str, Any] = {}
    exec(block.group(1), namespace)  # the snippet exactly as documented
    return namespace["verify_webhook"]


def test_a_public_then_loopback_answer_is_refused_and_nothing_is_sent(
    farm_settings: Settings, sessions: sessionmaker[Session], key: Key, receivers: list[Receiver]
) -> None:
    trap = start(receivers)
    job_id = finished_job(sessions, key, f"http://hooks.example.test:{trap.port}/hook")
    answers = resolver({"hooks.example.test": [PUBLIC, "127.0.0.1"]})
    assert deliver_webhook(ctx_for(farm_settings), job_id, resolve=answers) == "refused"
    assert trap.received == []
    (row,) = attempts(sessions, job_id)
    assert row.error.startswith("refused:") and "'hooks.example.test'" in row.error and row.status_code is None
    assert "127.0.0.1" not in row.error  # the tenant lists these records: no resolved address in them
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.webhook_gave_up_at is not None and job.webhook_delivered_at is None
    assert deliver_webhook(ctx_for(farm_settings), job_id, resolve=answers) == "skipped"  # refused is final


def test_delivery_connects_to_the_checked_address_with_the_urls_host(
    farm_settings: Settings, sessions: sessionmaker[Session], key: Key, receivers: list[Receiver]
) -> None:
    receiver = start(receivers)
    calls: list[str] = []
    # Resolved once: a second lookup (the kind a rebinding name answers differently) would hit this address.
    answers = iter([["127.0.0.1"], ["203.0.113.9"]])

    def rebinding(host: str, port: int) -> list[str]:
        calls.append(host)
        return next(answers)

    url = f"http://bücher.example.test:{receiver.port}/päth?q=ü"
    job_id = finished_job(sessions, key, url)
    assert deliver_webhook(ctx_for(farm_settings, webhook_allow_private=True), job_id, resolve=rebinding) == "delivered"
    assert calls == ["xn--bcher-kva.example.test"]
    (seen,) = receiver.received
    assert seen.headers["Host"] == f"xn--bcher-kva.example.test:{receiver.port}"
    assert seen.path == "/p%C3%A4th?q=%C3%BC"
    (row,) = attempts(sessions, job_id)
    assert row.address == "127.0.0.1" and row.url_host == "xn--bcher-kva.example.test"


def test_proxies_in_the_environment_are_ignored(
    farm_settings: Settings,
    sessions: sessionmaker[Session],
    key: Key,
    receivers: list[Receiver],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    receiver, proxy = start(receivers), start(receivers)
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    job_id = finished_job(sessions, key, receiver.url)
    assert deliver_webhook(ctx_for(farm_settings, webhook_allow_private=True), job_id) == "delivered"
    assert len(receiver.received) == 1 and proxy.received == []


def test_tls_names_the_urls_host_for_sni_and_the_certificate(
    farm_settings: Settings, sessions: sessionmaker[Session], key: Key, receivers: list[Receiver], tmp_path: Path
) -> None:
    ca, server = make_certificates(tmp_path, "hooks.example.test")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(server, tmp_path / "server.key")
    receiver = start(receivers, tls=tls)
    ctx = ctx_for(farm_settings, webhook_allow_private=True, webhook_ca_file=ca)
    answers = resolver({"hooks.example.test": ["127.0.0.1"], "other.example.test": ["127.0.0.1"]})
    good = finished_job(sessions, key, f"https://hooks.example.test:{receiver.port}/hook")
    assert deliver_webhook(ctx, good, resolve=answers) == "delivered"
    assert receiver.sni == ["hooks.example.test"] and len(receiver.received) == 1
    assert receiver.received[0].headers["Host"] == f"hooks.example.test:{receiver.port}"
    # Same address, another name: the certificate does not name it, so nothing is sent.
    wrong = finished_job(sessions, key, f"https://other.example.test:{receiver.port}/hook")
    with pytest.raises(WebhookFailed, match="TLS"):
        deliver_webhook(ctx, wrong, resolve=answers)
    assert len(receiver.received) == 1
    (row,) = attempts(sessions, wrong)
    assert row.error.startswith("TLS failed") and row.status_code is None


def make_certificates(directory: Path, name: str) -> tuple[Path, Path]:
    """A throwaway CA and a server certificate for `name` it signed, made with the openssl command."""
    ca, server = directory / "ca.pem", directory / "server.pem"

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory, timeout=60)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        str(ca),
        "-days",
        "2",
        "-subj",
        "/CN=test CA",
    )
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={name}")
    extensions = [
        f"subjectAltName=DNS:{name}",
        "authorityKeyIdentifier=keyid,issuer",
        "basicConstraints=CA:FALSE",
        "extendedKeyUsage=serverAuth",
    ]
    (directory / "ext.cnf").write_text("\n".join(extensions) + "\n")
    run(
        "x509", "-req", "-in", "server.csr", "-CA", str(ca), "-CAkey", "ca.key", "-CAcreateserial",
        "-out", str(server), "-days", "2", "-extfile", "ext.cnf",
    )  # fmt: skip
    return ca, server


def test_a_slow_receiver_times_out_and_the_attempt_is_recorded(
    farm_settings: Settings, sessions: sessionmaker[Session], key: Key, receivers: list[Receiver]
) -> None:
    slow = start(receivers, delay_s=3.0)
    job_id = finished_job(sessions, key, slow.url, status="failed")
    ctx = ctx_for(farm_settings, webhook_allow_private=True, webhook_timeout_s=0.5)
    began = time.monotonic()
    with pytest.raises(WebhookFailed, match="timed out"):
        deliver_webhook(ctx, job_id)
    assert time.monotonic() - began < 2.5
    (row,) = attempts(sessions, job_id)
    assert row.error == "timed out waiting for the answer after 0.5 s" and row.status_code is None
    assert 450 <= row.duration_ms < 2500 and row.event_id == deliveries.event_id(job_id, "failed")


def test_a_hanging_resolver_holds_a_delivery_no_longer_than_the_resolve_timeout(
    farm_settings: Settings, sessions: sessionmaker[Session], key: Key
) -> None:
    """A delivery resolves its host again (the address may have changed since the submit): a name server that never
    answers fails the attempt, to be retried, after webhook_resolve_timeout_s instead of holding the worker."""
    release = threading.Event()

    def hanging(host: str, port: int) -> list[str]:
        release.wait(30)
        return [PUBLIC]

    job_id = finished_job(sessions, key, "https://slow.example.test/hook")
    ctx = ctx_for(farm_settings, webhook_resolve_timeout_s=1.0)
    began = time.monotonic()
    try:
        with pytest.raises(WebhookFailed, match="did not resolve within 1 s"):
            deliver_webhook(ctx, job_id, resolve=hanging)
        took = time.monotonic() - began
    finally:
        release.set()
    assert 0.9 < took < 2.5, took
    (row,) = attempts(sessions, job_id)
    assert "slow.example.test" in (row.error or "") and row.status_code is None


def test_a_receiver_answering_a_byte_at_a_time_is_cut_at_the_attempts_deadline(
    farm_settings: Settings, sessions: sessionmaker[Session], key: Key
) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Padding: " + b"x" * 100:
                if stop.is_set():
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return
                time.sleep(0.1)  # each byte well inside the per-read timeout

    threading.Thread(target=trickle, daemon=True).start()
    job_id = finished_job(sessions, key, f"http://127.0.0.1:{listener.getsockname()[1]}/hook")
    ctx = ctx_for(farm_settings, webhook_allow_private=True, webhook_connect_timeout_s=0.5, webhook_timeout_s=0.5)
    try:
        with pytest.raises(WebhookFailed, match="took longer than 1 s in all"):
            deliver_webhook(ctx, job_id)
    finally:
        stop.set()
        listener.close()
    (row,) = attempts(sessions, job_id)
    assert row.status_code is None and 900 <= row.duration_ms < 3000


def test_attempts_are_capped_and_each_one_is_recorded(
    farm_settings: Settings, sessions: sessionmaker[Session], key: Key, receivers: list[Receiver]
) -> None:
    failing = start(receivers, (500,))
    job_id = finished_job(sessions, key, failing.url, status="canceled")
    ctx = ctx_for(farm_settings, webhook_allow_private=True, webhook_max_attempts=3)
    for _ in range(2):
        with pytest.raises(WebhookFailed, match="answered 500"):
            deliver_webhook(ctx, job_id)
    assert deliver_webhook(ctx, job_id) == "undeliverable"
    assert deliver_webhook(ctx, job_id) == "skipped"
    rows = attempts(sessions, job_id)
    assert [(r.attempt, r.status_code) for r in rows] == [(1, 500), (2, 500), (3, 500)]
    assert len({r.event_id for r in rows}) == 1
    assert [s.headers["Voicefarm-Delivery-Attempt"] for s in failing.received] == ["1", "2", "3"]
    assert len({s.headers["Voicefarm-Event-Id"] for s in failing.received}) == 1
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.webhook_attempts == 3 and job.webhook_gave_up_at is not None
        assert job.webhook_error == "answered 500"


def test_the_cap_holds_on_sqlite_and_postgresql_when_copies_of_a_message_race(
    database_url: str, fresh_broker_url: str, module_s3_settings: S3Settings, tmp_data_dir: Path
) -> None:
    settings = make_settings(database_url, fresh_broker_url, module_s3_settings, tmp_data_dir).model_copy(
        update={"webhook_allow_private": True, "webhook_max_attempts": 2}
    )
    failing = Receiver((500,))
    engine = make_engine(settings.resolved_database_url())
    sessions = make_session_factory(engine)
    try:
        with transaction(sessions) as session:
            row, _plaintext = tenants.create_key(session, "race")
            owner = Key(row.tenant_id, row.id, "", row.webhook_secret)
        job_id = finished_job(sessions, owner, failing.url)
        ctx = WebhookContext(settings, sessions, Storage.from_settings(settings))
        outcomes: list[str] = []

        def one_copy() -> None:
            try:
                outcomes.append(deliver_webhook(ctx, job_id))
            except WebhookFailed:
                outcomes.append("retry")

        copies = [threading.Thread(target=one_copy) for _ in range(6)]
        for thread in copies:
            thread.start()
        for thread in copies:
            thread.join(30)
        assert sorted(outcomes) == ["retry", "skipped", "skipped", "skipped", "skipped", "undeliverable"]
        assert [r.attempt for r in attempts(sessions, job_id)] == [1, 2] and len(failing.received) == 2
    finally:
        failing.close()
        engine.dispose()


def test_a_last_attempt_whose_worker_died_is_closed_by_a_later_copy(
    farm_settings: Settings, sessions: sessionmaker[Session], key: Key, receivers: list[Receiver]
) -> None:
    receiver = start(receivers)
    ctx = ctx_for(farm_settings, webhook_allow_private=True, webhook_max_attempts=1)
    job_id = finished_job(sessions, key, receiver.url)
    with transaction(sessions) as session:
        session.execute(update(Job).where(Job.id == job_id).values(webhook_attempts=1))
        session.add(WebhookDelivery(job_id=job_id, event_id="evt_x", attempt=1, url_host="h", started_at=utcnow()))
    assert deliver_webhook(ctx, job_id) == "skipped"  # the last attempt may still be running: leave it be
    with sessions() as session:
        assert session.scalar(select(Job.webhook_gave_up_at).where(Job.id == job_id)) is None
    with transaction(sessions) as session:
        long_ago = utcnow() - timedelta(hours=1)
        session.execute(update(WebhookDelivery).where(WebhookDelivery.job_id == job_id).values(started_at=long_ago))
    assert deliver_webhook(ctx, job_id) == "skipped"
    with sessions() as session:
        assert session.scalar(select(Job.webhook_gave_up_at).where(Job.id == job_id)) is not None
    assert receiver.received == []


def test_attempts_that_raise_are_recorded(
    farm_settings: Settings, sessions: sessionmaker[Session], key: Key, receivers: list[Receiver]
) -> None:
    ctx = ctx_for(farm_settings, webhook_allow_private=True)
    # A URL that slipped past the API (written before these checks existed): refused at delivery, recorded.
    malformed = finished_job(sessions, key, "http://exa mple.com/hook")
    assert deliver_webhook(ctx, malformed) == "refused"
    (row,) = attempts(sessions, malformed)
    assert row.error.startswith("refused: webhook_url must not contain spaces") and row.url_host
    # Nothing listens: the connection is refused, which is worth another try.
    closed = start(receivers)
    url = closed.url
    closed.close()
    receivers.remove(closed)
    gone = finished_job(sessions, key, url)
    with pytest.raises(WebhookFailed, match="could not connect"):
        deliver_webhook(ctx, gone)
    (row,) = attempts(sessions, gone)
    assert row.error.startswith("could not connect") and row.finished_at is not None


def test_redirects_are_not_followed(
    farm_settings: Settings, sessions: sessionmaker[Session], key: Key, receivers: list[Receiver]
) -> None:
    trap = start(receivers)
    redirector = start(receivers, (302,), location=trap.url)
    job_id = finished_job(sessions, key, redirector.url)
    with pytest.raises(WebhookFailed):
        deliver_webhook(ctx_for(farm_settings, webhook_allow_private=True), job_id)
    assert len(redirector.received) == 1 and trap.received == []
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.webhook_error == "answered 302" and job.webhook_delivered_at is None


def test_only_final_states_fire(
    farm_settings: Settings, sessions: sessionmaker[Session], key: Key, receivers: list[Receiver]
) -> None:
    receiver = start(receivers)
    ctx = ctx_for(farm_settings, webhook_allow_private=True)
    for status in ("queued", "running"):
        job_id = finished_job(sessions, key, receiver.url, status=status)
        assert deliver_webhook(ctx, job_id) == "skipped"
        assert attempts(sessions, job_id) == []
    assert receiver.received == []


def test_the_api_records_the_submitting_key(farm_settings: Settings, sessions: sessionmaker[Session], key: Key) -> None:
    trusting = farm_settings.model_copy(update={"webhook_allow_private": True})
    client = create_app(trusting).test_client()
    answer = client.post(
        "/v1/jobs", json={"text": "Hello.", "webhook_url": "http://127.0.0.1:1/hook"}, headers=auth(key.plaintext)
    )
    assert answer.status_code == 202, answer.get_json()
    with sessions() as session:
        assert session.scalar(select(Job.api_key_id).where(Job.id == answer.get_json()["id"])) == key.key_id
    other = tenants_key(sessions, "someone-else")
    assert client.get(f"/v1/jobs/{answer.get_json()['id']}/webhook-deliveries", headers=auth(other)).status_code == 404


def tenants_key(sessions: sessionmaker[Session], tenant: str) -> str:
    with transaction(sessions) as session:
        return tenants.create_key(session, tenant)[1]


def test_the_reconciler_query_finds_owed_webhooks(
    farm_settings: Settings, sessions: sessionmaker[Session], key: Key
) -> None:
    owed = finished_job(sessions, key, "http://127.0.0.1:1/hook")
    done = finished_job(sessions, key, "http://127.0.0.1:1/hook")
    with transaction(sessions) as session:
        session.get(Job, done).webhook_delivered_at = utcnow()  # type: ignore[union-attr]
    later = utcnow()
    with sessions() as session:
        assert deliveries.undelivered(session, Job, finished_before=later, quiet_since=later) == [owed]


# --- the webhook worker process ---------------------------------------------------------------------------------


def test_the_webhook_worker_imports_no_engine() -> None:
    probe = "import sys, worker.webhooks.main; print(sorted(m for m in sys.modules if 'engines' in m or 'onnx' in m))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("answers", "max_attempts", "delivered"),
    [((503, 500, 200), 4, True), ((500,), 3, False)],
    ids=["delivered-on-the-third", "capped-at-three"],
)
def test_a_real_webhook_worker_retries_with_backoff_up_to_the_cap(
    farm_settings: Settings,
    sessions: sessionmaker[Session],
    key: Key,
    receivers: list[Receiver],
    answers: tuple[int, ...],
    max_attempts: int,
    delivered: bool,
) -> None:
    receiver = start(receivers, answers)
    job_id = finished_job(sessions, key, receiver.url)
    env = dict(os.environ) | {
        "DATABASE_URL": farm_settings.database_url,
        "BROKER_URL": farm_settings.broker_url,
        "S3_ENDPOINT_URL": farm_settings.s3_endpoint_url,
        "AWS_ACCESS_KEY_ID": farm_settings.s3_access_key,
        "AWS_SECRET_ACCESS_KEY": farm_settings.s3_secret_key,
        "VOICEFARM_S3_BUCKET": farm_settings.s3_bucket,
        "VOICEFARM_DATA_DIR": str(farm_settings.data_dir),
        "VOICEFARM_WEBHOOK_ALLOW_PRIVATE": "true",
        "VOICEFARM_WEBHOOK_MAX_ATTEMPTS": str(max_attempts),
        "VOICEFARM_WEBHOOK_RETRY_BACKOFF_S": "1",
        "VOICEFARM_WEBHOOK_RETRY_BACKOFF_MAX_S": "1",
    }
    log = farm_settings.data_dir / "webhook-worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "voicefarm.cli", "webhook-worker", "--concurrency", "1"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        enqueue_webhook(make_celery(farm_settings), job_id)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(receiver.received) < 3:
            time.sleep(0.2)
        assert worker.poll() is None, log.read_text()[-3000:]
        # Long enough for a fourth attempt to show if the cap did not hold (retries wait at most 1 s here).
        time.sleep(0.5 if delivered else 3.0)
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(30)
    sent = [s.headers["Voicefarm-Delivery-Attempt"] for s in receiver.received]
    assert sent == ["1", "2", "3"], log.read_text()[-3000:]
    rows = attempts(sessions, job_id)
    assert [r.status_code for r in rows] == list(answers if delivered else (500, 500, 500))
    assert len({r.event_id for r in rows}) == 1 and all(r.finished_at is not None for r in rows)
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.webhook_delivered_at is not None) is delivered
        assert (job.webhook_gave_up_at is not None) is not delivered


def test_migration_gives_existing_keys_a_secret_of_their_own(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from shared.db import make_engine

    url = f"sqlite:///{tmp_path / 'old.db'}"
    cfg = Config()
    cfg.set_main_option("script_location", str(ROOT / "shared" / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url)
    command.upgrade(cfg, "0004")
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO tenants (id, name, created_at) VALUES ('t1', 'old', CURRENT_TIMESTAMP)"))
        for key_id in ("k1", "k2"):
            conn.execute(
                text(
                    "INSERT INTO api_keys (id, tenant_id, key_hash, label, name, created_at)"
                    " VALUES (:id, 't1', :id, 'vf_old', '', CURRENT_TIMESTAMP)"
                ),
                {"id": key_id},
            )
    command.upgrade(cfg, "head")
    with engine.connect() as conn:
        secrets = conn.execute(text("SELECT webhook_secret FROM api_keys ORDER BY id")).scalars().all()
    engine.dispose()
    assert len(set(secrets)) == 2 and all(s.startswith("whsec_") and len(s) > 40 for s in secrets)


# --- batch events ----------------------------------------------------------------------------------------------


def submit_batch(settings: Settings, key: Key, url: str, n: int = 3, prefix: str = "line") -> tuple[str, list[str]]:
    """A batch of `n` lines with a webhook, through the API; its id and its lines' job ids in order."""
    client = create_app(settings.model_copy(update={"webhook_allow_private": True})).test_client()
    lines = [{"id": f"{prefix}-{i}", "text": f"{prefix.title()} line number {i}."} for i in range(n)]
    answer = client.post("/v1/batches", json={"lines": lines, "webhook_url": url}, headers=auth(key.plaintext))
    assert answer.status_code == 202, answer.get_json()
    batch_id = answer.get_json()["id"]
    rows = client.get(f"/v1/batches/{batch_id}/manifest", headers=auth(key.plaintext)).get_json()["lines"]
    return batch_id, [r["job_id"] for r in rows]


def fail_like_a_worker(sessions: sessionmaker[Session], job_id: str) -> None:
    with transaction(sessions) as session:
        claimed = jobs.claim(session, job_id, "test-worker", 60, 3)
        assert claimed is not None
        assert jobs.fail(session, claimed[1], "engine_error", "the engine refused the line")


def nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {status: n for status, n in counts.items() if n}


def batch_row(sessions: sessionmaker[Session], batch_id: str) -> Batch:
    with sessions() as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None
        return batch


def batch_attempts(sessions: sessionmaker[Session], batch_id: str) -> list[WebhookDelivery]:
    with sessions() as session:
        return deliveries.deliveries(session, Batch, batch_id)


def test_batch_completed_is_signed_with_counts_and_a_manifest_the_receiver_can_fetch(
    farm_settings: Settings, sessions: sessionmaker[Session], key: Key, receivers: list[Receiver]
) -> None:
    receiver = start(receivers)
    storage = Storage.from_settings(farm_settings)
    ctx = ctx_for(farm_settings, webhook_allow_private=True)
    batch_id, job_ids = submit_batch(farm_settings, key, receiver.url)
    results = [finish_like_a_worker(sessions, storage, job_id, duration_s=1.5) for job_id in job_ids[:2]]
    # Not finished while a line is open: nothing to send.
    assert batch_row(sessions, batch_id).finished_at is None
    assert deliver_batch_webhook(ctx, batch_id) == "skipped" and batch_attempts(sessions, batch_id) == []
    fail_like_a_worker(sessions, job_ids[2])
    batch = batch_row(sessions, batch_id)
    assert batch.finished_at is not None and batch.completions == 1 and batch.finished_event == "batch.completed"
    with sessions() as session:
        assert deliveries.batch_owed(session, batch_id)

    assert deliver_batch_webhook(ctx, batch_id) == "delivered"
    assert deliver_batch_webhook(ctx, batch_id) == "skipped"  # delivered once, not again
    (seen,) = receiver.received
    assert readme_verifier()(key.secret, seen.headers, seen.body)
    event = json.loads(seen.body)
    assert event["id"] == seen.headers["Voicefarm-Event-Id"] == deliveries.batch_event_id(batch_id, 1)
    assert event["event"] == seen.headers["Voicefarm-Event"] == "batch.completed" and event["completion"] == 1
    shown = event["batch"]
    assert shown["id"] == batch_id and shown["done"] and shown["status"] == "failed"  # one line failed
    assert nonzero(shown["counts"]) == {"succeeded": 2, "failed": 1}
    assert shown["audio_seconds"] == 3.0 and shown["finished_at"] == event["created_at"]
    assert shown["manifest"]["api_path"] == f"/v1/batches/{batch_id}/manifest"
    # The manifest links are presigned: the receiver needs no API key, and the audio URLs inside work too.
    manifest = requests.get(shown["manifest"]["url"], timeout=30).json()
    assert manifest["batch_id"] == batch_id and [r["job_id"] for r in manifest["lines"]] == job_ids
    assert [r["sha256"] for r in manifest["lines"][:2]] == [r["sha256"] for r in results]
    assert manifest["lines"][2]["error_code"] == "engine_error"
    audio = requests.get(manifest["lines"][0]["url"], timeout=30).content
    assert audio == storage.get(results[0]["key"])
    manifest_csv = requests.get(shown["manifest"]["csv_url"], timeout=30).text
    assert manifest_csv.splitlines()[0].startswith("line_id,job_id") and len(manifest_csv.splitlines()) == 4

    (row,) = batch_attempts(sessions, batch_id)
    assert (row.attempt, row.status_code, row.job_id, row.batch_id) == (1, 200, None, batch_id)
    assert row.event_id == event["id"] and row.finished_at is not None
    client = create_app(farm_settings).test_client()
    listed = client.get(f"/v1/batches/{batch_id}/webhook-deliveries", headers=auth(key.plaintext)).get_json()
    assert [(d["event_id"], d["status_code"]) for d in listed["deliveries"]] == [(event["id"], 200)]
    view = client.get(f"/v1/batches/{batch_id}", headers=auth(key.plaintext)).get_json()
    assert view["webhook"]["delivered_at"] and view["webhook"]["attempts"] == 1
    assert view["webhook"]["event"] == "batch.completed"
    other = tenants_key(sessions, "not-the-owner")
    assert client.get(f"/v1/batches/{batch_id}/webhook-deliveries", headers=auth(other)).status_code == 404
    # The lines' own job rows have no webhook: only the batch announces itself.
    assert all(attempts(sessions, job_id) == [] for job_id in job_ids)


@pytest.mark.parametrize("order", ["first-commits-while-second-waits", "both-at-once"])
def test_two_workers_finishing_the_last_two_lines_at_once_make_one_event(
    database_url: str, fresh_broker_url: str, module_s3_settings: S3Settings, tmp_data_dir: Path, order: str
) -> None:
    """On SQLite and PostgreSQL: whatever the interleaving, the batch finishes exactly once."""
    settings = make_settings(database_url, fresh_broker_url, module_s3_settings, tmp_data_dir)
    engine = make_engine(settings.resolved_database_url())
    sessions = make_session_factory(engine)
    try:
        with transaction(sessions) as session:
            row, plaintext = tenants.create_key(session, "race")
        owner = Key(row.tenant_id, row.id, plaintext, row.webhook_secret)
        rounds = 1 if order == "first-commits-while-second-waits" else 8
        for n in range(rounds):
            batch_id, job_ids = submit_batch(settings, owner, "http://127.0.0.1:1/hook", n=2, prefix=f"r{n}")
            held = []
            with transaction(sessions) as session:
                for job_id in job_ids:
                    claimed = jobs.claim(session, job_id, f"worker-{job_id[:4]}", 60, 3)
                    assert claimed is not None
                    held.append(claimed[1])
            if order == "first-commits-while-second-waits":
                finish_in_a_held_transaction(sessions, held)
            else:
                finish_at_once(sessions, held)
            batch = batch_row(sessions, batch_id)
            assert batch.finished_at is not None and batch.completions == 1, (order, n)
            assert batch.finished_event == "batch.completed"
    finally:
        engine.dispose()


def finish_in_a_held_transaction(sessions: sessionmaker[Session], held: list[jobs.Attempt]) -> None:
    """The first line's transaction sees the second line still running and stays open while the second one's
    completes, which has to wait for it; the second then sees both lines final."""
    second_done = threading.Event()

    def second() -> None:
        with transaction(sessions) as session:
            assert jobs.complete(session, held[1], {"key": "k1", "format": "wav", "duration_s": 1.0})
        second_done.set()

    thread = threading.Thread(target=second)
    with sessions() as first:
        first.begin()
        assert jobs.complete(first, held[0], {"key": "k0", "format": "wav", "duration_s": 1.0})
        thread.start()
        time.sleep(1.0)
        waited = not second_done.is_set()  # waiting for the first transaction (the batch row's lock, or SQLite's)
        first.commit()
    thread.join(30)
    assert waited and second_done.is_set()


def finish_at_once(sessions: sessionmaker[Session], held: list[jobs.Attempt]) -> None:
    barrier = threading.Barrier(len(held))
    errors: list[BaseException] = []

    def finish(attempt: jobs.Attempt) -> None:
        try:
            barrier.wait(10)
            with transaction(sessions) as session:
                assert jobs.complete(session, attempt, {"key": "k", "format": "wav", "duration_s": 1.0})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=finish, args=(a,)) for a in held]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []


def test_a_canceled_batch_sends_batch_canceled_once_its_running_lines_finish(
    farm_settings: Settings, sessions: sessionmaker[Session], key: Key, receivers: list[Receiver]
) -> None:
    receiver = start(receivers)
    storage = Storage.from_settings(farm_settings)
    batch_id, job_ids = submit_batch(farm_settings, key, receiver.url, n=4)
    with transaction(sessions) as session:
        running = jobs.claim(session, job_ids[0], "test-worker", 60, 3)
    assert running is not None
    client = create_app(farm_settings).test_client()
    canceled = client.post(f"/v1/batches/{batch_id}/cancel", headers=auth(key.plaintext)).get_json()
    assert canceled["canceled_now"] == 3 and not canceled["done"] and canceled["finished_at"] is None
    ctx = ctx_for(farm_settings, webhook_allow_private=True)
    assert deliver_batch_webhook(ctx, batch_id) == "skipped"  # a line is still running: counts are not final
    finish_running(sessions, storage, job_ids[0], running[1])
    assert batch_row(sessions, batch_id).finished_event == "batch.canceled"
    assert deliver_batch_webhook(ctx, batch_id) == "delivered"
    (seen,) = receiver.received
    event = json.loads(seen.body)
    assert event["event"] == seen.headers["Voicefarm-Event"] == "batch.canceled"
    assert event["batch"]["status"] == "canceled"
    assert nonzero(event["batch"]["counts"]) == {"succeeded": 1, "canceled": 3}

    # A batch canceled with nothing running is finished by the cancel, and the API queues its event at once.
    other_id, _ = submit_batch(farm_settings, key, receiver.url, n=2, prefix="other")
    broker = redis.Redis.from_url(farm_settings.broker_url)
    try:
        broker.delete("webhooks")
        answer = client.post(f"/v1/batches/{other_id}/cancel", headers=auth(key.plaintext)).get_json()
        assert answer["done"] and answer["finished_at"] and answer["status"] == "canceled"
        queued = [json.loads(raw)["headers"] for raw in broker.lrange("webhooks", 0, -1)]
    finally:
        broker.close()
    assert [(h["task"], h["argsrepr"].strip("[](),'")) for h in queued] == [("voicefarm.batch_webhook", other_id)]


def finish_running(sessions: sessionmaker[Session], storage: Storage, job_id: str, attempt: jobs.Attempt) -> None:
    key = attempt_key(key_tenant(sessions, job_id), attempt, "wav")
    storage.put(key, b"audio", "wav")
    with transaction(sessions) as session:
        assert jobs.complete(session, attempt, {"key": key, "format": "wav", "duration_s": 0.5, "sha256": "0" * 64})


def key_tenant(sessions: sessionmaker[Session], job_id: str) -> str:
    with sessions() as session:
        return str(session.scalar(select(Job.tenant_id).where(Job.id == job_id)))


def test_a_rerender_reopens_the_batch_and_its_next_completion_is_a_new_event(
    farm_settings: Settings, sessions: sessionmaker[Session], key: Key, receivers: list[Receiver]
) -> None:
    receiver = start(receivers)
    storage = Storage.from_settings(farm_settings)
    ctx = ctx_for(farm_settings, webhook_allow_private=True)
    batch_id, job_ids = submit_batch(farm_settings, key, receiver.url, n=2)
    for job_id in job_ids:
        finish_like_a_worker(sessions, storage, job_id)
    assert deliver_batch_webhook(ctx, batch_id) == "delivered"
    client = create_app(farm_settings).test_client()
    take = client.post(
        f"/v1/batches/{batch_id}/lines/line-1", json={"text": "A changed line."}, headers=auth(key.plaintext)
    ).get_json()
    assert take["status"] == "queued"
    batch = batch_row(sessions, batch_id)
    assert batch.finished_at is None and batch.completions == 1
    assert deliver_batch_webhook(ctx, batch_id) == "skipped"  # open again: nothing owed
    finish_like_a_worker(sessions, storage, take["id"], data=b"the new take")
    batch = batch_row(sessions, batch_id)
    assert batch.completions == 2 and batch.webhook_attempts == 0 and batch.webhook_delivered_at is None
    assert deliver_batch_webhook(ctx, batch_id) == "delivered"
    first, second = (json.loads(s.body) for s in receiver.received)
    assert (
        first["id"] == deliveries.batch_event_id(batch_id, 1) != second["id"] == deliveries.batch_event_id(batch_id, 2)
    )
    assert second["completion"] == 2 and second["event"] == "batch.completed"
    manifest = requests.get(second["batch"]["manifest"]["url"], timeout=30).json()
    assert [(r["line_id"], r["take"], r["job_id"]) for r in manifest["lines"]] == [
        ("line-0", 1, job_ids[0]),
        ("line-1", 2, take["id"]),
    ]
    assert requests.get(manifest["lines"][1]["url"], timeout=30).content == b"the new take"
    # The first event's manifest stays as it was when that event was sent.
    old = requests.get(first["batch"]["manifest"]["url"], timeout=30).json()
    assert [r["job_id"] for r in old["lines"]] == job_ids
    assert [r.event_id for r in batch_attempts(sessions, batch_id)] == [first["id"], second["id"]]


def test_batch_event_attempts_are_capped_recorded_and_found_by_the_reconciler(
    farm_settings: Settings, sessions: sessionmaker[Session], key: Key, receivers: list[Receiver]
) -> None:
    failing = start(receivers, (500,))
    storage = Storage.from_settings(farm_settings)
    batch_id, job_ids = submit_batch(farm_settings, key, failing.url, n=1)
    finish_like_a_worker(sessions, storage, job_ids[0])
    # Owed and never attempted: the reconciler's query finds it (its message may never have been sent).
    later = utcnow() + timedelta(seconds=1)
    with sessions() as session:
        assert deliveries.undelivered(session, Batch, finished_before=later, quiet_since=later) == [batch_id]
    reconciler = Reconciler(sessions, make_celery(farm_settings), max_attempts=3, stale_unacked_s=60, grace_s=0)
    broker = redis.Redis.from_url(farm_settings.broker_url)
    try:
        broker.delete("webhooks")
        time.sleep(0.1)
        assert reconciler._send_missed_webhooks() == 1
        assert reconciler._send_missed_webhooks() == 0  # once per quiet period
        (raw,) = broker.lrange("webhooks", 0, -1)
    finally:
        broker.close()
    assert json.loads(raw)["headers"]["task"] == "voicefarm.batch_webhook"

    ctx = ctx_for(farm_settings, webhook_allow_private=True, webhook_max_attempts=2)
    with pytest.raises(WebhookFailed, match="answered 500"):
        deliver_batch_webhook(ctx, batch_id)
    assert deliver_batch_webhook(ctx, batch_id) == "undeliverable"
    assert deliver_batch_webhook(ctx, batch_id) == "skipped"
    rows = batch_attempts(sessions, batch_id)
    assert [(r.attempt, r.status_code) for r in rows] == [(1, 500), (2, 500)] and len({r.event_id for r in rows}) == 1
    assert [s.headers["Voicefarm-Delivery-Attempt"] for s in failing.received] == ["1", "2"]
    batch = batch_row(sessions, batch_id)
    assert batch.webhook_gave_up_at is not None and batch.webhook_error == "answered 500"
    with sessions() as session:
        assert not deliveries.batch_owed(session, batch_id)
        assert deliveries.undelivered(session, Batch, finished_before=later, quiet_since=later) == []


def test_a_delivery_row_names_a_job_or_a_batch_never_both(
    sessions: sessionmaker[Session], key: Key, farm_settings: Settings
) -> None:
    job_id = finished_job(sessions, key, "http://127.0.0.1:1/hook")
    batch_id, _ = submit_batch(farm_settings, key, "http://127.0.0.1:1/hook", n=1)
    for job, batch in ((None, None), (job_id, batch_id)):
        with pytest.raises(IntegrityError), transaction(sessions) as session:
            session.add(
                WebhookDelivery(
                    job_id=job, batch_id=batch, event_id="evt_x", attempt=1, url_host="h", started_at=utcnow()
                )
            )


def test_migration_0009_marks_finished_batches_finished_without_owing_their_event(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    url = f"sqlite:///{tmp_path / 'old.db'}"
    cfg = Config()
    cfg.set_main_option("script_location", str(ROOT / "shared" / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url)
    command.upgrade(cfg, "0008")
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO tenants (id, name, created_at) VALUES ('t1', 'old', CURRENT_TIMESTAMP)"))
        for batch_id, status in (("done", "succeeded"), ("open", "queued")):
            conn.execute(
                text(
                    "INSERT INTO batches (id, tenant_id, status, name, line_count, created_at, webhook_url)"
                    " VALUES (:id, 't1', 'active', '', 1, CURRENT_TIMESTAMP, 'https://example.com/hook')"
                ),
                {"id": batch_id},
            )
            conn.execute(
                text(
                    "INSERT INTO jobs (id, tenant_id, kind, status, engine, text, voice, mode, language, speed,"
                    " format, priority, progress, attempts, lost_attempts, transient_retries, webhook_attempts,"
                    " created_at, batch_id, line_id, line_no, take, replaced)"
                    " VALUES (:id, 't1', 'synthesize', :status, 'kokoro', 'Hi.', 'af_heart', 'clone', 'en', 1.0,"
                    " 'wav', 0, 0, 0, 0, 0, 0, CURRENT_TIMESTAMP, :id, 'l1', 1, 1, 0)"
                ),
                {"id": batch_id, "status": status},
            )
    command.upgrade(cfg, "0009")
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, finished_at, completions, finished_event, webhook_gave_up_at FROM batches ORDER BY id")
        ).all()
    engine.dispose()
    done, still_open = rows
    assert done.id == "done" and done.finished_at and done.completions == 1 and done.webhook_gave_up_at
    assert done.finished_event == "batch.completed"
    assert still_open.finished_at is None and still_open.completions == 0 and still_open.webhook_gave_up_at is None
