"""Admission limits: a per-key request rate (Flask-Limiter), a per-tenant queue depth, and CORS (Flask-CORS,
closed unless configured)."""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, jsonify, request
from flask_cors import CORS
from flask_limiter import Limiter
from flask_limiter.errors import RateLimitExceeded
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.errors import TooManyRequests
from shared.keys import hash_key
from shared.models import Job

log = logging.getLogger(__name__)


def _limit_key() -> str:
    """The request's API key (as stored: hashed), else its address: one count per key across API processes."""
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and key.strip():
        return "key:" + hash_key(key.strip())
    return "addr:" + (request.remote_addr or "")


def init_limits(app: Flask, storage_url: str, per_minute: int) -> Limiter:
    """A per-key request rate for everything under /v1 (Flask-Limiter, fixed one-minute windows in Redis).

    A Redis outage admits requests (`swallow_errors`): jobs still land in the database."""
    limiter = Limiter(
        _limit_key,
        app=app,
        application_limits=[f"{per_minute}/minute"] if per_minute > 0 else [],
        application_limits_exempt_when=lambda: not request.path.startswith("/v1"),
        storage_uri=storage_url if storage_url.startswith(("redis://", "rediss://")) else "memory://",
        storage_options={"socket_timeout": 1, "socket_connect_timeout": 1},
        strategy="fixed-window",
        key_prefix="voicefarm:rate",
        # Its headers would overwrite the Retry-After of every 429, the queue-depth refusal's too.
        headers_enabled=False,
        swallow_errors=True,
        enabled=per_minute > 0,
    )

    @app.errorhandler(RateLimitExceeded)
    def _rate_limited(exc: RateLimitExceeded) -> Response:
        body = {"error": {"code": "rate_limited", "message": f"this API key is limited to {exc.description}"}}
        response = jsonify(body)
        response.status_code = 429
        current = limiter.current_limit
        reset_at = current.reset_at if current is not None else time.time() + 60 - time.time() % 60
        response.headers["Retry-After"] = str(max(1, int(reset_at - time.time())))
        return response

    return limiter


def check_queue_depth(session: Session, tenant_id: str, limit: int) -> None:
    if limit <= 0:
        return
    queued = session.scalar(
        # Batch lines have their own backlog limit (shared/batches/service.py): a big batch never blocks single jobs.
        select(func.count())
        .select_from(Job)
        .where(Job.tenant_id == tenant_id, Job.status == "queued", Job.batch_id.is_(None))
    )
    if queued is not None and queued >= limit:
        raise TooManyRequests(
            f"{queued} of your jobs are already queued; the limit is {limit}", retry_after=30, code="queue_full"
        )


def init_cors(app: Flask, origins: list[str]) -> None:
    """Answer cross-origin requests only from the configured origins (Flask-CORS); by default no origin is allowed."""
    CORS(
        app,
        origins=list(origins),
        allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
        methods=["GET", "POST", "DELETE", "OPTIONS"],
        expose_headers=["Retry-After", "X-Voicefarm-Job-Id", "X-Voicefarm-Warnings"],
    )
