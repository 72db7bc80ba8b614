"""Tenants and their API keys: create, list, revoke; key roles; webhook secrets sealed at rest. Only the key's
digest is ever stored."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.errors import NotFound
from shared.keys import hash_key, key_label, new_key, new_webhook_secret
from shared.models import ApiKey, Tenant, utcnow
from shared.provenance import disclosure
from shared.secrets import SecretBox

# A key's role: "plain" keys use the API; "operator" keys also read the operator endpoints (GET /metrics).
PLAIN, OPERATOR = "plain", "operator"
ROLES = (PLAIN, OPERATOR)


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_key(
    session: Session, tenant_name: str, name: str = "", *, role: str = PLAIN, secrets: SecretBox | None = None
) -> tuple[ApiKey, str]:
    """Returns the row and the plaintext key, which is shown once and never stored. With `secrets` (the farm's
    keys), the key's webhook signing secret is stored encrypted (`secrets.open(row.webhook_secret)` reads it);
    without, as it is (tests; such rows keep working and `voicefarm keys reencrypt` encrypts them)."""
    if role not in ROLES:
        raise ValueError(f"unknown key role {role!r}; known: {', '.join(ROLES)}")
    tenant = get_or_create_tenant(session, tenant_name)
    plaintext = new_key()
    row = ApiKey(tenant_id=tenant.id, key_hash=hash_key(plaintext), label=key_label(plaintext), name=name, role=role)
    if secrets is not None:
        row.webhook_secret = secrets.seal(new_webhook_secret())
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
    return find_key(session, plaintext) is not None


def find_key(session: Session, plaintext: str) -> ApiKey | None:
    """The active key row of a plaintext key; None when unknown or revoked."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(plaintext)))
    return row if row is not None and row.revoked_at is None else None


def reencrypt_secrets(session: Session, secrets: SecretBox, page: int = 500) -> int:
    """Rewrite every stored webhook secret under the first key (plaintext ones encrypted); returns how many rows
    changed. Page by page, so a large key table is never held in memory at once."""
    changed, after = 0, ""
    while True:
        rows = session.execute(
            select(ApiKey.id, ApiKey.webhook_secret).where(ApiKey.id > after).order_by(ApiKey.id).limit(page)
        ).all()
        for key_id, stored in rows:
            resealed = secrets.reseal(stored)
            if resealed != stored:
                session.execute(update(ApiKey).where(ApiKey.id == key_id).values(webhook_secret=resealed))
                changed += 1
        if len(rows) < page:
            return changed
        after = rows[-1][0]


def set_disclosure(session: Session, tenant_name: str, position: str) -> Tenant:
    """The spoken AI notice (none, start or end) a tenant's jobs get when they do not say
    (shared/provenance/disclosure.py)."""
    disclosure.check(position)
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    if tenant is None:
        raise NotFound(f"no tenant named {tenant_name!r}", code="tenant_not_found")
    session.execute(update(Tenant).where(Tenant.id == tenant.id).values(disclosure=position))
    session.refresh(tenant)
    return tenant


def apply_disclosure(session: Session, tenant_id: str, fields: Iterable[dict[str, Any]]) -> None:
    """Settle each job's notice in its options, before its dedup key is computed: the position the request asked
    for, else the tenant's default; "none" leaves nothing in the options."""
    default: str | None = None
    for job in fields:
        options = dict(job.get("options") or {})
        asked = options.pop("disclosure", None)
        if asked is None and default is None:
            default = session.scalar(select(Tenant.disclosure).where(Tenant.id == tenant_id)) or disclosure.DEFAULT
        options |= disclosure.options(disclosure.resolve(asked, default))
        job["options"] = options or None
