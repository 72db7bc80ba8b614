"""Tenants and their API keys: create, list, revoke. Only the key's digest is ever stored."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.errors import NotFound
from shared.keys import hash_key, key_label, new_key
from shared.models import ApiKey, Tenant, utcnow


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_key(session: Session, tenant_name: str, name: str = "") -> tuple[ApiKey, str]:
    """Returns the row and the plaintext key, which is shown once and never stored."""
    tenant = get_or_create_tenant(session, tenant_name)
    plaintext = new_key()
    row = ApiKey(tenant_id=tenant.id, key_hash=hash_key(plaintext), label=key_label(plaintext), name=name)
    session.add(row)
    session.flush()
    return row, plaintext


def list_keys(session: Session) -> list[tuple[ApiKey, Tenant]]:
    rows = session.execute(select(ApiKey, Tenant).join(Tenant).order_by(ApiKey.created_at))
    return [(key, tenant) for key, tenant in rows.tuples()]


def revoke_key(session: Session, key_id: str) -> ApiKey:
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"no API key with id {key_id}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


def key_is_valid(session: Session, plaintext: str) -> bool:
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(plaintext)))
    return row is not None and row.revoked_at is None
