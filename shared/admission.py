"""What a tenant may add: counted atomically, and what it is entitled to.

Every path that adds work counts it against the tenant's limits before the insert, in the same transaction, under
a per-tenant lock (`lock_tenant`: `pg_advisory_xact_lock` on PostgreSQL, held until the transaction ends), so two
concurrent requests never both pass a check that only one of them fits: single jobs, speech requests and clone
jobs against the queue depth (producer/limits.py), batches and re-renders against the batch backlog
(shared/batches/service.py), voices against `max_voices_per_tenant`, lexicon entries against the lexicon's cap
(shared/text/lexicon.py). Lines answered from the dedup cache count like any other at admission. SQLite needs no
lock: it has one writer at a time, and a transaction that read before another's write cannot write after it.

A job priority above the default (5) is an entitlement (`tenants.max_priority`, set by an operator with
`voicefarm tenants set-priority`): a request that asks for more is refused with 403 `priority_not_allowed`.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from shared.errors import Forbidden, NotFound
from shared.models import Tenant, Voice

DEFAULT_MAX_PRIORITY = 5
HIGHEST_PRIORITY = 9
# Advisory lock namespaces (the two-key form, apart from the scheduler's one-key lock): admission, lexicon.
ADMISSION = 0x7666_6164  # "vfad"
LEXICON = 0x7666_6C78  # "vflx"


def lock_tenant(session: Session, tenant_id: str, namespace: int = ADMISSION) -> None:
    """Serialise the tenant's check-then-insert sections until this transaction ends (PostgreSQL)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    key = int.from_bytes(hashlib.sha256(tenant_id.encode()).digest()[:4], "big", signed=True)
    session.execute(text("SELECT pg_advisory_xact_lock(:namespace, :key)"), {"namespace": namespace, "key": key})


def check_priority(session: Session, tenant_id: str, priority: int) -> None:
    """403 `priority_not_allowed` when the tenant asks for a priority above its entitlement."""
    if priority <= DEFAULT_MAX_PRIORITY:
        return
    allowed = session.scalar(select(Tenant.max_priority).where(Tenant.id == tenant_id))
    allowed = DEFAULT_MAX_PRIORITY if allowed is None else int(allowed)
    if priority > allowed:
        raise Forbidden(
            f"priority {priority} is above this tenant's highest, {allowed}; an operator grants more with "
            "`voicefarm tenants set-priority`",
            code="priority_not_allowed",
        )


def entitled_priority(session: Session, tenant_id: str, wanted: int) -> int:
    """`wanted`, lowered to the tenant's entitlement: for requests whose priority the farm sets, not the client
    (the OpenAI-compatible speech endpoint sends at interactive priority only for an entitled tenant)."""
    if wanted <= DEFAULT_MAX_PRIORITY:
        return wanted
    allowed = session.scalar(select(Tenant.max_priority).where(Tenant.id == tenant_id))
    return min(wanted, DEFAULT_MAX_PRIORITY if allowed is None else int(allowed))


def check_voice_count(session: Session, tenant_id: str, limit: int) -> None:
    """403 `voice_limit` when the tenant already holds `limit` cloned voices (0: unlimited)."""
    if limit <= 0:
        return
    count = int(session.scalar(select(func.count()).select_from(Voice).where(Voice.tenant_id == tenant_id)) or 0)
    if count >= limit:
        raise Forbidden(
            f"this tenant holds {count} cloned voices; the limit is {limit}: delete one to clone another",
            code="voice_limit",
        )


def set_max_priority(session: Session, tenant_name: str, priority: int) -> Tenant:
    """Entitle a tenant (by name) to job priorities up to `priority` (0-9)."""
    if not 0 <= priority <= HIGHEST_PRIORITY:
        raise ValueError(f"a priority is 0-{HIGHEST_PRIORITY}")
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    if tenant is None:
        raise NotFound(f"no tenant named {tenant_name!r}", code="tenant_not_found")
    session.execute(update(Tenant).where(Tenant.id == tenant.id).values(max_priority=priority))
    session.refresh(tenant)
    return tenant


def entitle(session: Session, tenant_id: str, priority: int = HIGHEST_PRIORITY) -> None:
    """Entitle a tenant (by id) to job priorities up to `priority`: the `local` tenant of `./run.sh` gets all."""
    session.execute(update(Tenant).where(Tenant.id == tenant_id).values(max_priority=priority))
