"""Worker hosts joining the farm over the network: join tokens, and what the API tells a worker that joins.

A join token (`voicefarm join-token`) is a random bearer token, stored as a SHA-256 digest like an API key, listed
by its label, revocable, with an optional expiry checked against the database's clock. It opens one endpoint only,
POST /v1/join (producer/api/join.py), whose answer is what a worker needs and nothing more: the broker, database and
storage addresses the farm published for workers, with the credentials of a worker (a database role with the
grants workers need, a Redis user without admin commands, S3 keys limited to the farm's bucket: voicefarm/ops/
listen.py), and the farm-wide settings a worker must share with the API (leases, attempts, the farm id, the
labels' producer and signing credentials). No API key is ever part of it.

What the farm publishes lives in the data dir's `join.json` (mode 0600): `voicefarm up` writes it when it listens
on a network address; a farm on external services writes its own (docs/operations/multi-host.md).

This module is the one owner of the `join_tokens` table.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.db import db_now
from shared.errors import NotFound, Unauthorized
from shared.models import JoinToken

TOKEN_PREFIX = "vfj_"
JOIN_FILE = "join.json"
# What `join.json` must name: where a worker finds the farm's services, and its credentials for them.
SERVICE_SETTINGS = (
    "database_url",
    "broker_url",
    "s3_endpoint_url",
    "s3_access_key",
    "s3_secret_key",
    "s3_bucket",
    "s3_region",
)
# Settings a joined worker takes from the farm, over its own: a worker that disagreed on these with the API and the
# reconciler would lose leases, retry differently or label files under another name.
FARM_SETTINGS = (
    "farm_id",
    "job_lease_s",
    "max_attempts",
    "task_max_retries",
    "retry_backoff_max_s",
    "broker_visibility_timeout_s",
    "worker_live_s",
    "finish_spool_bytes",
    "label_producer",
    "presign_expiry_s",
    "s3_public_endpoint_url",
    "dedup_cache",
)
# Settings a joined worker takes from the farm unless its own host sets them: a GPU host may run another engine.
ENGINE_DEFAULTS = ("engine",)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenView:
    id: str
    label: str
    name: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    uses: int

    @property
    def state(self) -> str:
        return "revoked" if self.revoked_at is not None else "active"

    @classmethod
    def of(cls, row: JoinToken) -> TokenView:
        return cls(
            row.id,
            row.label,
            row.name,
            row.created_at,
            row.expires_at,
            row.revoked_at,
            row.last_used_at,
            row.uses,
        )


def create_token(session: Session, *, name: str = "", expires_in: timedelta | None = None) -> tuple[TokenView, str]:
    """A new token (shown once: only its digest is kept), expiring `expires_in` after now by the database's clock."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = db_now(session)
    row = JoinToken(
        token_hash=hash_token(token),
        label=token[: len(TOKEN_PREFIX) + 6] + "…",
        name=name,
        created_at=now,
        expires_at=now + expires_in if expires_in is not None else None,
    )
    session.add(row)
    session.flush()
    return TokenView.of(row), token


def list_tokens(session: Session, *, include_revoked: bool = False) -> list[TokenView]:
    query = select(JoinToken).order_by(JoinToken.created_at)
    if not include_revoked:
        query = query.where(JoinToken.revoked_at.is_(None))
    return [TokenView.of(row) for row in session.scalars(query)]


def revoke_token(session: Session, token_id: str) -> TokenView:
    """Revoke by id (or by a unique id prefix); a worker already joined keeps running, no new one joins with it."""
    rows = list(session.scalars(select(JoinToken).where(JoinToken.id.startswith(token_id)).limit(2)))
    if len(rows) != 1:
        raise NotFound(f"no single join token with id {token_id!r}", code="join_token_not_found")
    row = rows[0]
    if row.revoked_at is None:
        row.revoked_at = db_now(session)
    session.flush()
    return TokenView.of(row)


def use_token(session: Session, token: str) -> TokenView:
    """Check a presented token (unknown, revoked or expired: 401) and count its use, in the caller's transaction."""
    now = db_now(session)
    found = session.execute(
        update(JoinToken)
        .where(
            JoinToken.token_hash == hash_token(token),
            JoinToken.revoked_at.is_(None),
            or_(JoinToken.expires_at.is_(None), JoinToken.expires_at > now),
        )
        .values(last_used_at=now, uses=JoinToken.uses + 1)
        .returning(JoinToken.id)
    ).scalar_one_or_none()
    if found is None:
        raise Unauthorized("the join token is unknown, revoked or expired", code="invalid_join_token")
    row = session.get(JoinToken, found)
    assert row is not None
    session.refresh(row)
    return TokenView.of(row)


# -- the answer -------------------------------------------------------------------------------------------------
class JoinUnavailable(Exception):
    """This farm publishes nothing for workers to join by (no `join.json`)."""


def published_services(data_dir: Path) -> dict[str, str]:
    """The services the farm published for joining workers (the data dir's `join.json`)."""
    path = data_dir / JOIN_FILE
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise JoinUnavailable(f"{path.name} is missing or unreadable ({type(exc).__name__})") from None
    if not isinstance(found, dict) or not all(isinstance(found.get(name), str) for name in SERVICE_SETTINGS):
        raise JoinUnavailable(f"{path.name} does not name {', '.join(SERVICE_SETTINGS)}")
    return {name: str(found[name]) for name in SERVICE_SETTINGS}


def join_answer(settings: Settings) -> dict[str, Any]:
    """What a joining worker needs: `settings` (field name -> value) it must use, `defaults` it uses unless its host
    sets them, and `files` (the labels' signing certificate and key, as text) it keeps in its own data dir."""
    answer: dict[str, Any] = {"settings": published_services(settings.data_dir)}
    for name in FARM_SETTINGS:
        answer["settings"][name] = getattr(settings, name)
    answer["defaults"] = {name: getattr(settings, name) for name in ENGINE_DEFAULTS}
    files: dict[str, str] = {}
    if settings.c2pa_cert is not None and settings.c2pa_key is not None:
        files = {"c2pa_cert": settings.c2pa_cert.read_text(), "c2pa_key": settings.c2pa_key.read_text()}
    answer["files"] = files
    return answer
