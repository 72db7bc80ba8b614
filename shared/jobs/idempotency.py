"""Idempotency keys: a retried submission names the job it created; the key on any other request is refused.

A request is compared by the SHA-256 of its canonical form (every field, defaults filled in, keys sorted), which
is stored with the job in `jobs.request_hash`. Creation is one `INSERT ... ON CONFLICT DO NOTHING` on the
(tenant, key) unique constraint, so concurrent submissions with one key never raise: one inserts, the others
find its row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from shared.models import Job

# Job columns that record who asked, not what was asked: left out when a job without a stored hash is compared.
NOT_PART_OF_REQUEST = frozenset({"api_key_id"})


def request_hash(kind: str, request: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a request's canonical JSON: sorted keys, no whitespace, UTF-8, no NaN."""
    canonical = json.dumps(
        {"kind": kind, "request": request}, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def insert_once(session: Session, values: Mapping[str, Any]) -> str | None:
    """Insert a job unless its (tenant, idempotency key) is taken; the new id, or None when it was.

    On PostgreSQL a concurrent insert of the same key makes this wait until that transaction ends; once it has
    committed, the statement does nothing and the caller's next read (a new snapshot under READ COMMITTED) sees
    the row. SQLite serialises writers, so the same holds there.
    """
    key = [Job.tenant_id, Job.idempotency_key]
    statement: postgresql.Insert | sqlite.Insert
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        statement = postgresql.insert(Job).values(**values).on_conflict_do_nothing(index_elements=key)
    elif dialect == "sqlite":
        statement = sqlite.insert(Job).values(**values).on_conflict_do_nothing(index_elements=key)
    else:
        # Settings and migrations support these two; anything else is a misconfiguration, said plainly.
        raise ValueError(f"the job database must be PostgreSQL or SQLite, not {dialect}")
    job_id = session.scalar(statement.returning(Job.id))
    return None if job_id is None else str(job_id)


def find(session: Session, tenant_id: str, idempotency_key: str) -> Job | None:
    """The tenant's job created with this key, if any."""
    return session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == idempotency_key))
