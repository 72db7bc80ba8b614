"""Webhook targets are checked against the farm's own services; deliveries reach a real local receiver."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from producer.app import create_app
from shared.config import Settings
from shared.errors import BadRequest
from shared.models import Job
from shared.webhooks import check_webhook_url
from tests.fixtures_farm import auth
from worker.context import WorkerContext
from worker.synthesis import run_synthesis
from worker.webhooks import WebhookFailed, deliver_webhook


class Receiver:
    def __init__(self, status: int = 200, location: str | None = None):
        self.received: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers["Content-Length"])
                receiver.received.append(json.loads(self.rfile.read(length)))
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("ftp://example.com/x", "invalid_webhook_url"),
        ("http:///nohost", "invalid_webhook_url"),
        ("http://user:pw@example.com/", "invalid_webhook_url"),
        ("http://127.0.0.1:9/", "webhook_forbidden"),
        ("http://localhost/", "webhook_forbidden"),
        ("http://10.1.2.3/", "webhook_forbidden"),
        ("http://169.254.169.254/latest/meta-data/", "webhook_forbidden"),
        ("http://[::1]/", "webhook_forbidden"),
        ("http://no-such-host.invalid/", "webhook_unresolvable"),
    ],
)
def test_unsafe_targets_are_refused(url: str, code: str) -> None:
    with pytest.raises(BadRequest) as caught:
        check_webhook_url(url, Settings())
    assert caught.value.code == code


def test_the_farms_own_services_are_refused_even_on_a_trusted_network(farm_settings: Settings) -> None:
    trusting = farm_settings.model_copy(update={"webhook_allow_private": True})
    own = [
        trusting.broker_url.replace("redis://", "http://"),
        trusting.s3_endpoint_url,
        f"http://127.0.0.1:{trusting.port}/",
    ]
    for url in own:
        with pytest.raises(BadRequest) as caught:
            check_webhook_url(url, trusting)
        assert caught.value.code == "webhook_forbidden", url
    assert check_webhook_url("http://127.0.0.1:1/hook", trusting)


def test_api_refuses_an_internal_webhook(client: FlaskClient, api_key: str) -> None:
    response = client.post(
        "/v1/jobs", json={"text": "hi", "webhook_url": "http://127.0.0.1:5432/"}, headers=auth(api_key)
    )
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "webhook_forbidden"


@pytest.mark.slow
def test_delivery_after_the_job_finishes(
    farm_settings: Settings, api_key: str, sessions: sessionmaker[Session], receiver: Receiver
) -> None:
    trusting = farm_settings.model_copy(update={"webhook_allow_private": True, "worker_name": "hook-test"})
    client = create_app(trusting).test_client()
    submitted = client.post("/v1/jobs", json={"text": "Done soon.", "webhook_url": receiver.url}, headers=auth(api_key))
    assert submitted.status_code == 202, submitted.get_json()
    job_id = submitted.get_json()["id"]
    ctx = WorkerContext.build(trusting)
    try:
        assert run_synthesis(ctx, job_id) == "succeeded"
        assert deliver_webhook(ctx, job_id) == "delivered"
        assert deliver_webhook(ctx, job_id) == "skipped"  # delivered once, not again
    finally:
        ctx.stop()
    (event,) = receiver.received
    assert event["event"] == "job.succeeded" and event["job"]["id"] == job_id
    assert event["job"]["result"]["url"].startswith(trusting.s3_endpoint_url)
    view = client.get(f"/v1/jobs/{job_id}", headers=auth(api_key)).get_json()
    assert view["webhook"]["attempts"] == 1 and view["webhook"]["delivered_at"]


def test_redirects_are_not_followed(farm_settings: Settings, sessions: sessionmaker[Session], api_key: str) -> None:
    trap = Receiver()
    redirector = Receiver(status=302, location=trap.url)
    trusting = farm_settings.model_copy(update={"webhook_allow_private": True, "worker_name": "hook-test"})
    client = create_app(trusting).test_client()
    job_id = client.post(
        "/v1/jobs", json={"text": "x", "webhook_url": redirector.url}, headers=auth(api_key)
    ).get_json()["id"]
    ctx = WorkerContext.build(trusting)
    try:
        with pytest.raises(WebhookFailed):
            deliver_webhook(ctx, job_id)
    finally:
        ctx.stop()
        trap.close()
        redirector.close()
    assert len(redirector.received) == 1 and trap.received == []
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.webhook_error == "answered 302" and job.webhook_delivered_at is None
