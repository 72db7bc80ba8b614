"""Helpers for the batch tests: messages in the broker, and finishing a job the way a worker does."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import redis
from sqlalchemy.orm import Session, sessionmaker

from shared.db import transaction
from shared.jobs import state as jobs
from shared.models import Job, Worker, utcnow
from shared.storage import Storage
from worker.finisher import attempt_key


def broker_messages(broker_url: str) -> list[tuple[str, str]]:
    """(queue list name, job id) of every message waiting in the kokoro queue, in the order a worker takes them:
    kombu keeps one Redis list per priority step (`engine.kokoro`, then `engine.kokoro\\x06\\x163`, ...) and
    pops each from its tail."""
    client = redis.Redis.from_url(broker_url)
    out = []
    names = sorted(k.decode() for k in client.keys("engine.kokoro*"))
    names.sort(key=lambda n: 0 if n == "engine.kokoro" else int(n.rsplit("\x16", 1)[-1]))
    for name in names:
        for raw in reversed(client.lrange(name, 0, -1)):
            out.append((name, json.loads(raw)["headers"]["argsrepr"].strip("[]'")))
    client.close()
    return out


def register_workers(sessions: sessionmaker[Session], count: int) -> None:
    with transaction(sessions) as session:
        for i in range(count):
            session.add(Worker(name=f"test-worker-{i}", engine="kokoro", last_seen=utcnow()))


def finish_like_a_worker(
    sessions: sessionmaker[Session], storage: Storage, job_id: str, data: bytes | None = None, duration_s: float = 1.0
) -> dict[str, Any]:
    """Claim the job, upload `data` to its attempt's key and complete it, through shared/jobs/state.py."""
    with transaction(sessions) as session:
        claimed = jobs.claim(session, job_id, "test-worker", 60, 3)
        assert claimed is not None, job_id
        job, attempt = claimed
        tenant_id, fmt = job.tenant_id, job.format
    data = data if data is not None else f"audio of {job_id}".encode()
    key = attempt_key(tenant_id, attempt, fmt)
    storage.put(key, data, fmt)
    result = {
        "key": key,
        "format": fmt,
        "sample_rate": 24000,
        "duration_s": duration_s,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "segments": [],
        "warnings": [],
        "engine": "kokoro",
    }
    with transaction(sessions) as session:
        assert jobs.complete(session, attempt, result)
    return result


def row(sessions: sessionmaker[Session], job_id: str) -> Job:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job
