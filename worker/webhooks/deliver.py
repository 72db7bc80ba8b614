"""Webhook delivery: POST a finished job's or batch's event, signed, to the address its URL was checked against.

The connection goes through urllib3 with the checked IP address as the pool's host, while the Host header, the
TLS SNI name and the certificate check name the URL's host. urllib3 never reads proxy settings from the
environment (requests and urllib do), follows no redirects here, and does no retries of its own: every attempt
is one request, recorded in `webhook_deliveries`, and retried by the Celery task's backoff. urllib3's timeouts
bound each socket operation; a receiver answering a byte at a time would reset them forever, so a watchdog also
cuts the connection when the whole attempt has taken longer than the connect and answer timeouts together.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import urllib3
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from shared.batches import service as batches
from shared.config import Settings
from shared.errors import BadRequest, VoicefarmError
from shared.jobs.views import job_view
from shared.models import Batch, Job
from shared.secrets import SecretKeyError, open_secret
from shared.storage import Storage
from shared.webhooks import deliveries
from shared.webhooks.targets import (
    Resolver,
    Target,
    WebhookResolveTimeout,
    WebhookUnresolvable,
    parse_webhook_url,
    resolve_host,
    resolve_target_within,
)

log = logging.getLogger(__name__)
USER_AGENT = "voicefarm-webhook/1"
# The receiver's answer body is never needed; read at most this much of it before closing.
MAX_ANSWER_BYTES = 4096


class WebhookFailed(Exception):
    """The receiver did not take the delivery; worth another try."""


class DeadlinePassed(Exception):
    """The whole attempt took longer than it may: the receiver answered too slowly."""


class _Watched:
    """A urllib3 connection that reports itself once connected, so the attempt's watchdog can cut it."""

    def __init__(self, *args: Any, on_connect: Callable[[Any], None], **kwargs: Any) -> None:
        self._on_connect = on_connect
        super().__init__(*args, **kwargs)

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self._on_connect(self)


class _WatchedHTTP(_Watched, HTTPConnection):
    pass


class _WatchedHTTPS(_Watched, HTTPSConnection):
    pass


class Resources(Protocol):
    settings: Settings
    sessions: sessionmaker[Session]
    storage: Storage


def deliver_webhook(ctx: Resources, job_id: str, *, resolve: Resolver = resolve_host) -> str:
    """One attempt at a job's webhook: 'delivered', 'refused', 'undeliverable' or 'skipped'; raises
    `WebhookFailed` when another attempt may succeed."""
    return _deliver_event(ctx, Job, job_id, _job_event, resolve)


def deliver_batch_webhook(ctx: Resources, batch_id: str, *, resolve: Resolver = resolve_host) -> str:
    """One attempt at a finished batch's final event (`batch.completed` or `batch.canceled`), as for jobs. The
    body holds the batch view (counts, audio seconds) and presigned links to its manifest, stored afresh for
    each attempt so the line URLs in it are fresh too."""
    return _deliver_event(ctx, Batch, batch_id, _batch_event, resolve)


def _job_event(ctx: Resources, attempt: deliveries.Attempt) -> dict[str, Any]:
    assert attempt.job is not None
    job = attempt.job
    return {
        "id": attempt.event_id,
        "event": attempt.event,
        "created_at": job.finished_at.isoformat() if job.finished_at else None,
        "job": job_view(job, ctx.storage, ctx.settings.presign_expiry_s),
    }


def _batch_event(ctx: Resources, attempt: deliveries.Attempt) -> dict[str, Any]:
    assert attempt.batch is not None
    batch, expiry_s = attempt.batch, ctx.settings.presign_expiry_s
    with ctx.sessions() as session:
        view = batches.view(batch, batches.progress(session, [batch.id])[batch.id])
        manifest = batches.store_manifest(session, ctx.storage, batch, expiry_s)
    view["manifest"] = {
        "url": manifest["json"],
        "csv_url": manifest["csv"],
        "expires_at": datetime.fromtimestamp(time.time() + expiry_s, UTC).isoformat(),
        "api_path": f"/v1/batches/{batch.id}/manifest",
    }
    return {
        "id": attempt.event_id,
        "event": attempt.event,
        "created_at": batch.finished_at.isoformat() if batch.finished_at else None,
        "completion": batch.completions,
        "batch": view,
    }


def _deliver_event(
    ctx: Resources,
    model: deliveries.Subject,
    subject_id: str,
    make_body: Callable[[Resources, deliveries.Attempt], dict[str, Any]],
    resolve: Resolver,
) -> str:
    """Claim the next attempt at the job's or batch's event, if one is owed, and make it."""
    with ctx.sessions() as session:
        url = session.scalar(select(model.webhook_url).where(model.id == subject_id))
    if not url:
        return "skipped"
    attempt = deliveries.claim_attempt(
        ctx.sessions,
        model,
        subject_id,
        ctx.settings.webhook_max_attempts,
        _host_of(url),
        in_flight_s=_in_flight_s(ctx.settings),
    )
    if attempt is None:
        return "skipped"
    subject = f"{'job' if model is Job else 'batch'} {subject_id}"
    return _deliver(ctx, attempt, url, lambda: make_body(ctx, attempt), resolve, subject)


def _in_flight_s(settings: Settings) -> float:
    # An attempt still unfinished after its task's time limit had its worker die.
    return settings.webhook_connect_timeout_s + settings.webhook_timeout_s + 60


def _deliver(
    ctx: Resources,
    attempt: deliveries.Attempt,
    url: str,
    make_body: Callable[[], dict[str, Any]],
    resolve: Resolver,
    subject: str,
) -> str:
    """Sign and send one claimed attempt, and record how it ended."""
    settings = ctx.settings
    last = attempt.number >= settings.webhook_max_attempts

    def fail(error: str, *, status_code: int | None = None, address: str | None = None, retry: bool = True) -> str:
        give_up = last or not retry
        deliveries.finish_attempt(
            ctx.sessions, attempt, status_code=status_code, error=error, address=address, give_up=give_up
        )
        log.warning("%s: webhook attempt %d failed: %s", subject, attempt.number, error)
        if give_up:
            return "undeliverable" if retry else "refused"
        raise WebhookFailed(error)

    if attempt.secret is None:
        return fail("no signing secret: the submitting API key is gone", retry=False)
    try:
        secret = open_secret(settings, attempt.secret)  # stored encrypted (shared/secrets.py)
    except SecretKeyError as exc:  # this worker lacks the key that sealed it: retried once an operator sets it
        log.error("%s: %s", subject, exc)
        return fail("the signing secret cannot be read with this worker's VOICEFARM_SECRET_KEY")
    try:
        target = resolve_target_within(url, settings, resolve)  # a hung name server holds no worker for long
    except (WebhookUnresolvable, WebhookResolveTimeout) as exc:  # DNS may be failing for a while: try again later
        return fail(exc.message)
    except BadRequest as exc:
        return fail(f"refused: {exc.message}", retry=False)
    try:
        body = json.dumps(make_body()).encode()
    except VoicefarmError as exc:  # storage is down: the event waits for it
        return fail(f"could not build the event: {exc.message}")
    except Exception as exc:  # the database went away mid-attempt, or a bug: recorded like any failed attempt
        log.warning("%s: building the webhook event failed", subject, exc_info=True)
        return fail(f"could not build the event ({type(exc).__name__})")
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Voicefarm-Event-Id": attempt.event_id,
        "Voicefarm-Event": attempt.event,
        "Voicefarm-Delivery-Attempt": str(attempt.number),
        "Voicefarm-Timestamp": timestamp,
        "Voicefarm-Signature": deliveries.sign(secret, timestamp, body),
    }
    address = target.addresses[0]
    try:
        status = post(target, body, headers, settings)
    except Exception as exc:  # every way an attempt can end is recorded, the unforeseen ones too
        return fail(describe(exc, settings), address=address)
    if not 200 <= status < 300:
        return fail(f"answered {status}", status_code=status, address=address)
    deliveries.finish_attempt(ctx.sessions, attempt, status_code=status, address=address, delivered=True)
    return "delivered"


def post(target: Target, body: bytes, headers: dict[str, str], settings: Settings) -> int:
    """POST to the checked address; returns the status code. Raises urllib3's errors, or `DeadlinePassed`."""
    timeout = urllib3.Timeout(connect=settings.webhook_connect_timeout_s, read=settings.webhook_timeout_s)
    expired, connections = threading.Event(), []

    def cut(conn: Any) -> None:
        with contextlib.suppress(OSError, AttributeError):
            conn.sock.shutdown(socket.SHUT_RDWR)

    def on_connect(conn: Any) -> None:
        connections.append(conn)
        if expired.is_set():
            cut(conn)

    def expire() -> None:
        expired.set()
        for conn in list(connections):
            cut(conn)

    watchdog = threading.Timer(settings.webhook_connect_timeout_s + settings.webhook_timeout_s, expire)
    watchdog.daemon = True
    watchdog.start()
    pool: urllib3.HTTPConnectionPool
    if target.scheme == "https":
        context = ssl.create_default_context()
        if settings.webhook_ca_file is not None:
            context.load_verify_locations(cafile=str(settings.webhook_ca_file))
        pool = urllib3.HTTPSConnectionPool(
            target.addresses[0],
            target.port,
            timeout=timeout,
            retries=False,
            maxsize=1,
            ssl_context=context,
            server_hostname=target.host,
            assert_hostname=target.host,
            on_connect=on_connect,
        )
        pool.ConnectionCls = _WatchedHTTPS
    else:
        pool = urllib3.HTTPConnectionPool(
            target.addresses[0], target.port, timeout=timeout, retries=False, maxsize=1, on_connect=on_connect
        )
        pool.ConnectionCls = _WatchedHTTP
    try:
        response = pool.urlopen(
            "POST",
            target.path,
            body=body,
            headers={**headers, "Host": target.host_header},
            retries=False,
            redirect=False,
            assert_same_host=False,
            preload_content=False,
        )
        try:
            response.read(MAX_ANSWER_BYTES)
        except HTTPError:
            pass  # the status line is what counts
        finally:
            response.close()
        return int(response.status)
    except Exception as exc:
        if expired.is_set() and not isinstance(exc, DeadlinePassed):
            raise DeadlinePassed() from exc
        raise
    finally:
        watchdog.cancel()
        pool.close()


def describe(exc: BaseException, settings: Settings) -> str:
    """A short account of a failed attempt for the job's client: what happened, never a traceback."""
    if isinstance(exc, SoftTimeLimitExceeded):
        return "the attempt ran past its time limit"
    if isinstance(exc, DeadlinePassed):
        total = settings.webhook_connect_timeout_s + settings.webhook_timeout_s
        return f"timed out: the answer took longer than {total:g} s in all"
    # NewConnectionError is a ConnectTimeoutError to urllib3, so it is told apart first.
    if isinstance(exc, NewConnectionError):
        reason = str(exc).rpartition(": ")[2] or "connection failed"
        return f"could not connect: {reason}"
    if isinstance(exc, ConnectTimeoutError):
        return f"timed out connecting after {settings.webhook_connect_timeout_s:g} s"
    if isinstance(exc, ReadTimeoutError):
        return f"timed out waiting for the answer after {settings.webhook_timeout_s:g} s"
    if isinstance(exc, SSLError):
        return f"TLS failed: {exc.args[0] if exc.args else type(exc).__name__}"
    if isinstance(exc, ProtocolError):
        return "the connection broke before an answer came"
    if isinstance(exc, HTTPError | OSError):
        return f"delivery failed ({type(exc).__name__})"
    log.error("webhook delivery raised unexpectedly", exc_info=exc)
    return f"delivery failed unexpectedly ({type(exc).__name__})"


def _host_of(url: str) -> str:
    try:
        return parse_webhook_url(url)[1]
    except BadRequest:
        return url.partition("://")[2].partition("/")[0][:255] or "?"
