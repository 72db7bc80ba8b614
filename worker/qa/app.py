"""The QA worker's Celery app: the gate's checks on their own queue and pool, with Whisper and the speaker encoder
but no engine.

`voicefarm qa-worker` runs it (entry module worker/qa/main.py). A synthesis worker stores a take and moves on;
the check runs here, so the engine's time is never spent waiting for it (worker/qa/step.py).
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from celery import Celery
from celery.signals import setup_logging, worker_init
from sqlalchemy.exc import OperationalError

from shared import logs
from shared.batches import scheduler
from shared.config import Settings, load_settings
from shared.db import make_engine, make_session_factory
from shared.errors import Transient
from shared.models import Job
from shared.queue import QA_QUEUE, QA_TASK, make_celery, try_enqueue
from shared.storage import Storage
from worker.evaluators.asr import Transcriber
from worker.evaluators.similarity import shared_encoder
from worker.niceness import run_below_the_api
from worker.notify import job_finished
from worker.pool import PerProcess
from worker.qa.step import CheckContext, run_check

log = logging.getLogger(__name__)


def build_context(settings: Settings, app: Celery | None = None) -> CheckContext:
    sessions = make_session_factory(make_engine(settings.resolved_database_url()))
    ctx = CheckContext(
        settings=settings,
        sessions=sessions,
        storage=Storage.from_settings(settings),
        name=f"qa@{socket.gethostname()}-{os.getpid()}",
        transcriber=Transcriber(settings.data_dir / "cache"),
        encoder=shared_encoder(),
    )
    if app is not None:
        ctx.send_retake = lambda job: _send_retake(app, ctx, job)
        ctx.notify = lambda job_id: job_finished(app, ctx.sessions, ctx.settings, job_id)
    return ctx


def _send_retake(app: Celery, ctx: CheckContext, job: Job) -> None:
    """A batch line waits for the scheduler's window like any unsent line; any other job is sent at once (the
    reconciler sends it if this send fails)."""
    if job.batch_id is not None:
        scheduler.safe_top_up(ctx.sessions, app, ctx.settings.batch_window_per_worker, ctx.settings.worker_live_s)
    else:
        try_enqueue(app, job.id, job.kind, job.engine, job.priority, len(job.text), ctx.sessions)


def create_qa_app(settings: Settings | None = None) -> Celery:
    settings = settings or load_settings()
    app = make_celery(settings)
    app.conf.task_default_queue = QA_QUEUE
    context = PerProcess(lambda: build_context(settings, app))

    @setup_logging.connect(weak=False)
    def _logging(**_: Any) -> None:
        logs.setup_logging(settings.log_format)

    @worker_init.connect(weak=False)
    def _below_the_api(**_: Any) -> None:
        run_below_the_api(settings.worker_nice)

    @app.task(
        name=QA_TASK,
        autoretry_for=(Transient, OperationalError),
        retry_backoff=True,
        retry_backoff_max=settings.retry_backoff_max_s,
        retry_jitter=True,
        max_retries=settings.task_max_retries,
        # Only for a message sent without limits of its own: every sender gives each check limits that grow with
        # its take (shared/queue.py CheckLimits), and a check that keeps running past them ends needs_review after
        # max_check_lapses lapses (shared/jobs/state.py end_lapsed_checks).
        soft_time_limit=300,
        time_limit=360,
    )
    def check(job_id: str) -> str:
        with logs.log_context(job_id=job_id):
            outcome = run_check(context(), job_id)
            log.info("qa check of job %s: %s", job_id, outcome)
        return outcome

    return app
