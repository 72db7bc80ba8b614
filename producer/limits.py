"""Admission limits: failed authentications per client address, a per-key request rate (Flask-Limiter), a
per-tenant queue depth, open speech streams per tenant and per process, and CORS (Flask-CORS, closed unless
configured).

Before a key is looked up, the client's address is checked: an address with `auth_failures_per_minute` failed
authentications (401s) this minute is refused (429 `too_many_auth_failures`) until the minute ends, whatever it
sends. The count is one Redis key per address (per /64 for IPv6) and minute, so a flood of random bearers costs
Redis one key, not one per bearer. The per-key rate counts only valid keys (their SHA-256, as stored); a bearer
that is no key is refused by authentication and counted against its address. Behind a reverse proxy the address
comes from X-Forwarded-For only when the connecting peer is one of `trusted_proxies`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import threading
import time
import uuid
from typing import cast

import redis
from flask import Flask, Response, g, jsonify, request
from flask_cors import CORS
from flask_limiter import Limiter
from flask_limiter.errors import RateLimitExceeded
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.admission import lock_tenant
from shared.config import Settings
from shared.errors import TooManyRequests, Unavailable
from shared.keys import hash_key
from shared.models import ApiKey, Job

log = logging.getLogger(__name__)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
FAILURE_PREFIX = "voicefarm:authfail:"
STREAM_PREFIX = "voicefarm:streams:"
# An open stream's slot lapses this long after its holder last renewed it (a crashed API process's slots too).
STREAM_LEASE_S = 60.0
STREAM_RENEW_S = 15.0


def _guarded(path: str) -> bool:
    """The paths that authenticate a bearer: the API and the operators' /metrics."""
    return path.startswith("/v1") or path == "/metrics"


def trusted_networks(entries: list[str]) -> tuple[Network, ...]:
    try:
        return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries if entry.strip())
    except ValueError as exc:
        raise ValueError(f"trusted_proxies: {exc}") from None


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def _within(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(trusted: tuple[Network, ...]) -> str:
    """The client's address: the peer's, or, when the peer is a trusted proxy, the nearest X-Forwarded-For hop that
    is not a trusted proxy (each proxy appends the address it saw, so hops further left are the client's word)."""
    peer = request.remote_addr or ""
    if not trusted or not _within(peer, trusted):
        return peer
    hops = [hop.strip() for value in request.headers.getlist("X-Forwarded-For") for hop in value.split(",")]
    hops = [hop for hop in hops if hop]
    for hop in reversed(hops):
        if not _within(hop, trusted):
            return hop if _is_ip(hop) else peer
    return hops[0] if hops else peer


def _bucket(address: str) -> str:
    """What failures are counted against: the address, or its /64 for IPv6 (one host holds a whole /64)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address or "unknown"
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class AuthFailures:
    """Failed authentications per address in fixed one-minute windows: one Redis key per address and minute
    (`voicefarm:authfail:<address>:<minute>`, expiring after two). A Redis outage admits (as the rate limit does)."""

    def __init__(self, client: redis.Redis | None, per_minute: int) -> None:
        self.client, self.per_minute = client, per_minute
        self._local: dict[tuple[str, int], int] = {}  # without Redis (a memory:// broker): this process's count
        self._lock = threading.Lock()

    @staticmethod
    def _window() -> tuple[int, int]:
        now = time.time()
        return int(now // 60), max(1, int(60 - now % 60) + 1)

    def retry_after(self, address: str) -> int | None:
        """Seconds until the address may try again, or None when it is under the limit."""
        if self.per_minute <= 0:
            return None
        minute, left = self._window()
        bucket = _bucket(address)
        if self.client is None:
            with self._lock:
                count = self._local.get((bucket, minute), 0)
        else:
            try:
                count = int(cast(bytes | None, self.client.get(f"{FAILURE_PREFIX}{bucket}:{minute}")) or 0)
            except redis.RedisError:
                log.warning("auth failure count unavailable (broker down): admitting", exc_info=True)
                return None
        return left if count >= self.per_minute else None

    def add(self, address: str) -> None:
        if self.per_minute <= 0:
            return
        minute, _left = self._window()
        bucket = _bucket(address)
        if self.client is None:
            with self._lock:
                self._local = {k: v for k, v in self._local.items() if k[1] >= minute}
                self._local[(bucket, minute)] = self._local.get((bucket, minute), 0) + 1
            return
        key = f"{FAILURE_PREFIX}{bucket}:{minute}"
        try:
            pipe = self.client.pipeline()
            pipe.incr(key)
            pipe.expire(key, 120)
            pipe.execute()
        except redis.RedisError:
            log.warning("auth failure not counted (broker down)", exc_info=True)


class KnownKeys:
    """Hashes of valid keys this process has seen lately (for `ttl_s`; at most `size`): what the per-key rate
    limit counts. Only valid keys are remembered, so random bearers grow nothing here either."""

    def __init__(self, sessions: sessionmaker[Session], ttl_s: float = 30.0, size: int = 10_000) -> None:
        self.sessions, self.ttl_s, self.size = sessions, ttl_s, size
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def valid_hash(self, header: str) -> str | None:
        """The stored hash of the bearer in `header` when it is a live key, else None."""
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        digest = hash_key(key.strip())
        now = time.monotonic()
        with self._lock:
            if self._seen.get(digest, 0.0) > now:
                return digest
        with self.sessions() as session:
            found = session.scalar(
                select(ApiKey.id).where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None)).limit(1)
            )
        if found is None:
            return None
        with self._lock:
            if len(self._seen) >= self.size:
                self._seen = {k: v for k, v in self._seen.items() if v > now}
                while len(self._seen) >= self.size:
                    del self._seen[next(iter(self._seen))]
            self._seen[digest] = now + self.ttl_s
        return digest


def _redis(url: str) -> redis.Redis | None:
    if not url.startswith(("redis://", "rediss://")):
        return None
    return redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)


def init_limits(app: Flask, storage_url: str, per_minute: int) -> Limiter:
    """The address check and failure count (before and after authentication), then a per-key request rate for
    everything under /v1 (Flask-Limiter, fixed one-minute windows in Redis) counting valid keys only.

    A Redis outage admits requests (`swallow_errors`): jobs still land in the database."""
    settings: Settings = app.extensions["voicefarm"].settings
    trusted = trusted_networks(settings.trusted_proxies)
    failures = AuthFailures(_redis(storage_url), settings.auth_failures_per_minute)
    known = KnownKeys(app.extensions["voicefarm"].sessions)
    app.extensions["voicefarm.auth_failures"] = failures

    # Registered before Flask-Limiter's own check, so a refused address costs no key lookup at all.
    @app.before_request
    def _admit() -> None:
        if not _guarded(request.path):
            return
        g.client_address = client_address(trusted)
        wait = failures.retry_after(g.client_address)
        if wait is not None:
            raise TooManyRequests(
                f"{failures.per_minute} failed authentications from this address this minute; wait {wait} s",
                retry_after=wait,
                code="too_many_auth_failures",
            )
        if per_minute > 0 and request.path.startswith("/v1"):
            g.valid_key_hash = known.valid_hash(request.headers.get("Authorization", ""))

    @app.after_request
    def _count_failure(response: Response) -> Response:
        if response.status_code == 401 and _guarded(request.path):
            failures.add(g.get("client_address") or client_address(trusted))
        return response

    limiter = Limiter(
        lambda: "key:" + (g.get("valid_key_hash") or ""),
        app=app,
        application_limits=[f"{per_minute}/minute"] if per_minute > 0 else [],
        # Only valid keys are counted: a bearer that is no key gets its 401 and counts against its address.
        application_limits_exempt_when=lambda: not request.path.startswith("/v1") or not g.get("valid_key_hash"),
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
    """429 `queue_full` at `limit` queued single jobs. Takes the tenant's admission lock (shared/admission.py) for
    the rest of the transaction: the caller inserts its job before the commit, so counts never overshoot."""
    if limit <= 0:
        return
    lock_tenant(session, tenant_id)
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


# -- open speech streams ------------------------------------------------------------------------------------------
# A tenant's open streams are members of a sorted set scored by when each lapses; Redis's own clock decides, so
# API hosts with skewed clocks agree. A slot whose holder died is dropped once its lease lapses.
_ACQUIRE = """
if redis.replicate_commands then redis.replicate_commands() end
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], t + tonumber(ARGV[3]), ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3])) + 1)
return 1
"""
_RENEW = """
if redis.replicate_commands then redis.replicate_commands() end
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
redis.call('ZADD', KEYS[1], t + tonumber(ARGV[2]), ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 1)
return 1
"""


class StreamSlot:
    """One open synchronous stream: a slot of this API process (held in memory) and one of its tenant's (in
    Redis, under a lease renewed while the stream lives). `release` is idempotent."""

    def __init__(self, local: threading.BoundedSemaphore, client: redis.Redis, tenant_id: str, member: str) -> None:
        self._local, self._client, self.key, self.member = local, client, STREAM_PREFIX + tenant_id, member
        self._renewed = time.monotonic()
        self._released = False
        self._lock = threading.Lock()

    def renew(self) -> None:
        """Keep the tenant's slot while the stream lives; cheap to call often (it writes every STREAM_RENEW_S)."""
        if self._released or time.monotonic() - self._renewed < STREAM_RENEW_S:
            return
        self._renewed = time.monotonic()
        try:
            self._client.eval(_RENEW, 1, self.key, self.member, STREAM_LEASE_S)
        except redis.RedisError:
            log.warning("stream slot %s not renewed (broker down)", self.member)

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._local.release()
        try:
            self._client.zrem(self.key, self.member)
        except redis.RedisError:
            log.warning("stream slot %s not released (broker down): it lapses by itself", self.member)


class StreamSlots:
    """Admission of synchronous speech streams: at most `per_process` open in this API process (the threads it
    keeps for everything else are never taken) and `per_tenant` open for a tenant across the farm."""

    def __init__(self, client: redis.Redis, per_process: int, per_tenant: int) -> None:
        self.client, self.per_process, self.per_tenant = client, per_process, per_tenant
        self._local = threading.BoundedSemaphore(per_process)
        self._prefix = f"{socket.gethostname()}:{os.getpid()}:"

    @classmethod
    def for_settings(cls, client: redis.Redis, settings: Settings) -> StreamSlots:
        return cls(client, settings.api_threads - settings.api_reserved_threads, settings.max_streams_per_tenant)

    def acquire(self, tenant_id: str) -> StreamSlot:
        """A slot, or 429 `too_many_streams` (the tenant's are all open) / 503 `server_busy` (this process has no
        thread to spare). The tenant is asked first: one tenant's flood is told it is over its own cap."""
        key, member = STREAM_PREFIX + tenant_id, self._prefix + uuid.uuid4().hex
        # Unlimited per tenant (0): still counted, so the slot can be renewed and released the same way.
        cap = self.per_tenant if self.per_tenant > 0 else 1 << 30
        try:
            admitted = self.client.eval(_ACQUIRE, 1, key, member, cap, STREAM_LEASE_S)
        except redis.RedisError:
            raise Unavailable("the broker is unavailable", code="broker_unavailable") from None
        if not admitted:
            raise TooManyRequests(
                f"your tenant already has {self.per_tenant} open speech streams; the limit is "
                f"max_streams_per_tenant={self.per_tenant}",
                retry_after=5,
                code="too_many_streams",
            )
        if not self._local.acquire(blocking=False):
            with contextlib.suppress(redis.RedisError):
                self.client.zrem(key, member)
            raise Unavailable(
                f"this API process already holds its {self.per_process} open speech streams; retry shortly",
                code="server_busy",
            )
        return StreamSlot(self._local, self.client, tenant_id, member)


def init_cors(app: Flask, origins: list[str]) -> None:
    """Answer cross-origin requests only from the configured origins (Flask-CORS); by default no origin is allowed."""
    CORS(
        app,
        origins=list(origins),
        allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
        methods=["GET", "POST", "DELETE", "OPTIONS"],
        expose_headers=["Retry-After", "X-Voicefarm-Job-Id", "X-Voicefarm-Warnings"],
    )
