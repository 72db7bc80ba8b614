"""Bearer-key authentication: resolves the request's API key to its tenant."""

from __future__ import annotations

from flask import g, request
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.errors import Unauthorized
from shared.keys import hash_key
from shared.models import ApiKey


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
