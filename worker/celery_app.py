"""The worker's Celery app: tasks plus the process hook that loads the engine once and keeps it resident."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init, worker_process_shutdown
from sqlalchemy.exc import OperationalError

from shared import jobs, voices
from shared.config import load_settings
from shared.db import transaction
from shared.errors import Unavailable
from shared.models import Job
from shared.queue import CLONE_TASK, SYNTHESIZE_TASK, WEBHOOK_TASK, engine_queue, make_celery
from worker.cloning import run_clone
from worker.context import WorkerContext
from worker.synthesis import run_synthesis
from worker.webhooks import WebhookFailed, deliver_webhook

log = logging.getLogger(__name__)
# Failures worth another try: a dependency was briefly down.
WEBHOOK_RETRIES = 5
TRANSIENT = (Unavailable, OperationalError, ConnectionError, TimeoutError)


def backoff_s(retries: int, base: float = 2.0, cap: float = 120.0) -> float:
    """Exponential backoff with equal jitter: never under half the step, so retries span a known minimum time."""
    return min(cap, base * 2**retries) * random.uniform(0.5, 1.0)


def create_worker_app() -> Celery:
    settings = load_settings()
    app = make_celery(settings)
    holder: dict[str, WorkerContext] = {}

    def context() -> WorkerContext:
        # Built in the process hook; built lazily here when a pool runs tasks in the main process.
        if "ctx" not in holder:
            holder["ctx"] = WorkerContext.build(settings)
            holder["ctx"].start_heartbeat()
        return holder["ctx"]

    @worker_process_init.connect(weak=False)
    def _load_engine(**_: Any) -> None:
        context()

    @worker_process_shutdown.connect(weak=False)
    def _stop(**_: Any) -> None:
        if "ctx" in holder:
            holder["ctx"].stop()

    def run(task: Task, job: Callable[[WorkerContext, str], str], job_id: str) -> str:
        ctx = context()
        try:
            outcome = job(ctx, job_id)
            if outcome != "skipped":
                notify(job_id)
            return outcome
        except SoftTimeLimitExceeded:
            limit = task.request.timelimit[1] if task.request.timelimit else None
            _give_up(ctx, job_id, "time_limit_exceeded", f"the job ran past its time limit ({limit} s)")
            notify(job_id)
            return "failed"
        except TRANSIENT as exc:
            _release(ctx, job_id)
            if task.request.retries >= settings.task_max_retries:
                _give_up(ctx, job_id, "retries_exhausted", f"gave up after {task.request.retries} retries: {exc}")
                notify(job_id)
                return "failed"
            log.warning("job %s: transient failure (%s); retrying", job_id, exc)
            raise task.retry(exc=exc, countdown=backoff_s(task.request.retries)) from exc

    def notify(job_id: str) -> None:
        with context().sessions() as session:
            job = session.get(Job, job_id)
            if job is None or not job.webhook_url:
                return
        app.send_task(WEBHOOK_TASK, args=[job_id], queue=engine_queue(settings.engine))

    @app.task(bind=True, name=WEBHOOK_TASK, max_retries=WEBHOOK_RETRIES, soft_time_limit=30, time_limit=60)
    def webhook(self: Task, job_id: str) -> str:
        try:
            return deliver_webhook(context(), job_id)
        except WebhookFailed as exc:
            if self.request.retries >= WEBHOOK_RETRIES:
                log.warning("job %s: webhook undeliverable after %d tries", job_id, self.request.retries + 1)
                return "undeliverable"
            raise self.retry(exc=exc, countdown=backoff_s(self.request.retries, base=5.0)) from exc

    @app.task(bind=True, name=SYNTHESIZE_TASK, max_retries=settings.task_max_retries)
    def synthesize(self: Task, job_id: str) -> str:
        return run(self, run_synthesis, job_id)

    @app.task(bind=True, name=CLONE_TASK, max_retries=settings.task_max_retries)
    def clone(self: Task, job_id: str) -> str:
        return run(self, run_clone, job_id)

    return app


def _give_up(ctx: WorkerContext, job_id: str, code: str, message: str) -> None:
    with transaction(ctx.sessions) as session:
        job = session.get(Job, job_id)
        if job is not None and job.kind == "clone":
            voices.mark_failed(session, job.voice, code, message)
        jobs.fail(session, job_id, code, message)


def _release(ctx: WorkerContext, job_id: str) -> None:
    # Best effort: when the database is what is down, the lease lapses and the reconciler takes over.
    try:
        with transaction(ctx.sessions) as session:
            jobs.release(session, job_id, ctx.name)
    except Exception:
        log.warning("job %s: could not hand the job back", job_id, exc_info=True)
