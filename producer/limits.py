"""Admission limits: a per-key request rate, a per-tenant queue depth, and CORS (closed unless configured)."""

from __future__ import annotations

import logging
import time

import redis
from flask import Flask, Response, request
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.errors import TooManyRequests
from shared.models import Job

log = logging.getLogger(__name__)


class RateLimiter:
    """Fixed one-minute windows counted in Redis, so every API process shares one count per key."""

    def __init__(self, url: str, per_minute: int):
        self.per_minute = per_minute
        self._redis = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)

    def check(self, key_id: str) -> None:
        if self.per_minute <= 0:
            return
        now = time.time()
        window = int(now // 60)
        name = f"voicefarm:rate:{key_id}:{window}"
        try:
            pipe = self._redis.pipeline()
            pipe.incr(name)
            pipe.expire(name, 120)
            count = int(pipe.execute()[0])
        except redis.RedisError:
            # The limiter must not take the API down with Redis; jobs still land in the database.
            log.warning("rate limiter unavailable; admitting the request")
            return
        if count > self.per_minute:
            raise TooManyRequests(
                f"this API key is limited to {self.per_minute} requests per minute",
                retry_after=max(1, int(60 - now % 60)),
                code="rate_limited",
            )


def check_queue_depth(session: Session, tenant_id: str, limit: int) -> None:
    if limit <= 0:
        return
    queued = session.scalar(
        # Batch lines have their own backlog limit (shared/batches.py): a big batch never blocks single jobs.
        select(func.count())
        .select_from(Job)
        .where(Job.tenant_id == tenant_id, Job.status == "queued", Job.batch_id.is_(None))
    )
    if queued is not None and queued >= limit:
        raise TooManyRequests(
            f"{queued} of your jobs are already queued; the limit is {limit}", retry_after=30, code="queue_full"
        )


def init_cors(app: Flask, origins: list[str]) -> None:
    """Answer cross-origin requests only from the configured origins; by default no origin is allowed."""
    allowed = set(origins)

    @app.after_request
    def _cors(response: Response) -> Response:
        origin = request.headers.get("Origin")
        if origin and origin in allowed:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, Idempotency-Key"
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
            response.headers.add("Vary", "Origin")
        return response
