"""Bearer-key authentication: resolves the request's API key to its tenant; operator endpoints want an operator
key (or, for /metrics, the metrics token)."""

from __future__ import annotations

import hmac

from flask import g, request
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.errors import Forbidden, Unauthorized
from shared.keys import hash_key
from shared.models import ApiKey
from shared.tenants import OPERATOR


def authenticate(session: Session) -> str:
    """Return the tenant id of the request's key, or raise `Unauthorized`."""
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("send 'Authorization: Bearer <api key>'", code="missing_api_key")
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key.strip())))
    if row is None or row.revoked_at is not None:
        raise Unauthorized("the API key is unknown or revoked", code="invalid_api_key")
    g.tenant_id = row.tenant_id
    g.api_key_id = row.id  # its webhook secret signs the deliveries of jobs it submits
    return row.tenant_id


def authorize_operator(sessions: sessionmaker[Session], token: str = "") -> None:
    """Let an operator through: a bearer equal to `token` (when one is set; compared in constant time) or an
    operator key. No or unknown credentials raise `Unauthorized` (401), a plain key `Forbidden` (403)."""
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        raise Unauthorized("send 'Authorization: Bearer <operator key or metrics token>'", code="missing_api_key")
    if token and hmac.compare_digest(presented.encode(), token.encode()):
        return
    with sessions() as session:
        row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(presented)))
        if row is None or row.revoked_at is not None:
            raise Unauthorized("the API key is unknown or revoked", code="invalid_api_key")
        if row.role != OPERATOR:
            raise Forbidden("this endpoint is for operators: use an operator key", code="operator_only")
