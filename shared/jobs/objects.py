"""Stored job objects and the jobs that name them.

A synthesized job's result names the object its attempt stored (`jobs/<tenant>/<job>/a<attempt>.<format>`); a job
answered from the dedup cache (shared/jobs/dedup.py) names the same object, not a copy. `jobs.object_key` records
the object of every succeeded job (shared/jobs/state.py sets it with the result), so an object is deleted only
when no job row names it: every place that deletes job objects goes through `delete_unreferenced`.

Those places today: the finisher dropping what earlier attempts of a job stored (worker/finisher.py) and the QA
gate dropping the takes it did not keep (worker/qa/step.py). Neither ever deletes an object a succeeded job
names, and a cache hit can only name a succeeded job's object, so the check and the delete need no lock between
them; a future deleter of succeeded jobs' objects (retention) must clear or delete the rows first, in the same
transaction as the check, and lock the source rows a cache hit reads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.models import Job
from shared.storage import Storage

log = logging.getLogger(__name__)


def referenced(session: Session, keys: Iterable[str], *, besides: Iterable[str] = ()) -> set[str]:
    """The keys some job names as its object, not counting the jobs in `besides`."""
    wanted = sorted(set(keys))
    others = list(set(besides))
    found: set[str] = set()
    for start in range(0, len(wanted), 500):
        query = select(Job.object_key).where(Job.object_key.in_(wanted[start : start + 500]))
        if others:
            query = query.where(Job.id.not_in(others))
        found.update(str(key) for key in session.scalars(query.distinct()))
    return found


def delete_unreferenced(
    sessions: sessionmaker[Session], storage: Storage, keys: Iterable[str], *, besides: Iterable[str] = ()
) -> list[str]:
    """Delete those of `keys` no job names (apart from `besides`); returns the keys deleted. A key some job still
    names is kept, and logged: it is that job's audio."""
    keys = list(dict.fromkeys(keys))
    if not keys:
        return []
    with sessions() as session:
        kept = referenced(session, keys, besides=besides)
    deleted = []
    for key in keys:
        if key in kept:
            log.info("object %s is named by another job; kept", key)
            continue
        storage.delete(key)
        deleted.append(key)
    return deleted
