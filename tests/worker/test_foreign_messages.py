"""A message for a job id this farm's database does not know (another farm's, on a shared broker) is acked, but
never silently: the worker logs a warning and counts it for /metrics."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from sqlalchemy.orm import Session, sessionmaker

from shared import metrics, tenants
from shared.config import Settings
from shared.db import transaction
from shared.jobs import state as jobs
from worker.attempts import UNKNOWN, run_job


@dataclass
class ClaimOnly:
    """The part of a WorkerContext that a refused claim touches."""

    sessions: sessionmaker[Session]

    def claim(self, job_id: str) -> Any:
        with transaction(self.sessions) as session:
            return jobs.claim(session, job_id, "w", 60, 3)


def never(*_: Any) -> str:
    raise AssertionError("nothing may run")


def test_an_unknown_job_id_is_a_warning_and_a_count_not_a_silent_skip(
    farm_settings: Settings, sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    ctx: Any = ClaimOnly(sessions)
    with caplog.at_level(logging.WARNING, logger="worker.attempts"):
        assert run_job(ctx, "0" * 32, never) == UNKNOWN
    assert "not in this farm's database" in caplog.text and "BROKER_URL" in caplog.text
    # A known job that is finished is an ordinary skip, without the warning.
    with transaction(sessions) as session:
        tenant = tenants.get_or_create_tenant(session, "acme")
        job, _ = jobs.create_job(session, tenant_id=tenant.id, idempotency_key=None, engine="kokoro", text="hi",
                                 voice="jf_alpha", mode="clone", language="en", format="wav")  # fmt: skip
        job.status = "succeeded"
    caplog.clear()
    assert run_job(ctx, job.id, never) == "skipped" and "not in this farm" not in caplog.text

    observer = metrics.JobObserver(farm_settings.broker_url)
    observer.unknown_job()
    observer.unknown_job()
    client = redis.Redis.from_url(farm_settings.broker_url)
    collector = metrics.FarmCollector(sessions, client, 60)
    (family,) = [f for f in collector.collect() if f.name == "voicefarm_unknown_job_messages"]
    assert family.samples[0].value == 2
