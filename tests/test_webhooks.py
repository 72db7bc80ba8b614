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
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from producer.app import create_app
from shared import deliveries, tenants
from shared.config import Settings
from shared.db import make_engine, make_session_factory, transaction
from shared.errors import BadRequest
from shared.models import Job, WebhookDelivery, utcnow
from shared.queue import enqueue_webhook, make_celery
from shared.storage import Storage
from shared.webhooks import check_webhook_url, resolve_target
from tests.conftest import S3Settings
from tests.fixtures_farm import auth, make_settings
from worker.webhook_app import WebhookContext
from worker.webhooks import WebhookFailed, deliver_webhook

ROOT = Path(__file__).resolve().parent.parent
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
        return deliveries.deliveries(session, job_id)


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
    assert caught.value.code == "webhook_forbidden" and "127.0.0.1" in caught.value.message
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
    with pytest.raises(BadRequest, match="10.0.0.7"):
        resolve_target("http://lan.example.test/", Settings(), mapped)


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


def readme_verifier() -> Any:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- webhook-verify -->\s*```python\n(.*?)```\s*<!-- /webhook-verify -->", text, re.S)
    assert block is not None, "README lost its webhook verification snippet"
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
    assert row.error.startswith("refused:") and "127.0.0.1" in row.error and row.status_code is None
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
        assert deliveries.undelivered_jobs(session, finished_before=later, quiet_since=later) == [owed]


# --- the webhook worker process ---------------------------------------------------------------------------------


def test_the_webhook_worker_imports_no_engine() -> None:
    probe = "import sys, worker.webhook_main; print(sorted(m for m in sys.modules if 'engines' in m or 'onnx' in m))"
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
