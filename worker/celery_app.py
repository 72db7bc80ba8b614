"""The worker's Celery app: job tasks plus the process hook that loads the engine once and keeps it resident.

Tasks are thin: each unpacks its message and calls a plain function (`run_synthesis`, `run_clone`). Whether to
retry is the error's decision: `Transient` errors retry with Celery's own exponential backoff and jitter, capped
at `retry_backoff_max_s`, for up to `task_max_retries` tries; nothing else is retried by Celery.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Celery, Task
from celery.signals import setup_logging, worker_init, worker_process_shutdown

from shared import logs
from shared.batches import scheduler
from shared.config import load_settings
from shared.db import transaction
from shared.errors import Transient
from shared.jobs import state as jobs
from shared.metrics import JobObserver
from shared.models import Job
from shared.queue import CLONE_TASK, SYNTHESIZE_TASK, CheckLimits, enqueue_check, make_celery
from worker.attempts import UNKNOWN
from worker.cloning import run_clone
from worker.context import WorkerContext
from worker.niceness import run_below_the_api
from worker.notify import Announcer, job_finished
from worker.pool import PerProcess
from worker.synthesis import run_synthesis

log = logging.getLogger(__name__)


def create_worker_app() -> Celery:
    settings = load_settings()
    app = make_celery(settings)
    announcers: list[Announcer] = []
    observer = JobObserver(settings.broker_url)  # latency histograms of /metrics (shared/metrics.py)

    def announcer_for(ctx: WorkerContext) -> Announcer:
        announcer = Announcer(lambda job_id: job_finished(app, ctx.sessions, ctx.settings, job_id, observer))
        announcers.append(announcer)
        return announcer

    def build() -> WorkerContext:
        # Loads the engine once per pool process; it stays resident for every task of the process.
        ctx = WorkerContext.build(settings)
        ctx.notify = announcer_for(ctx)
        ctx.send_check = lambda job_id: _send_check(app, ctx, job_id)
        ctx.finish_behind = True
        ctx.start()
        return ctx

    context = PerProcess(build)

    @setup_logging.connect(weak=False)
    def _logging(**_: Any) -> None:
        logs.setup_logging(settings.log_format)  # connected: Celery leaves the root logger to this hook

    @worker_init.connect(weak=False)
    def _below_the_api(**_: Any) -> None:
        run_below_the_api(settings.worker_nice)

    @worker_process_shutdown.connect(weak=False)
    def _stop(**_: Any) -> None:
        if (ctx := context.built()) is not None:
            ctx.stop()
        for announcer in announcers:
            announcer.close()

    class JobTask(Task):
        autoretry_for = (Transient,)
        retry_backoff = True
        retry_backoff_max = settings.retry_backoff_max_s
        retry_jitter = True
        max_retries = settings.task_max_retries

        def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
            # Only two ways out end here: retries of an outage ran out, or the retry could not be sent.
            _after_lost_retry(context(), args[0], exc, self.request.retries >= self.max_retries)

    def job_task(name: str, fn: Callable[[WorkerContext, str], str]) -> None:
        @app.task(bind=True, base=JobTask, name=name)
        def task(self: Task, job_id: str) -> str:
            with logs.log_context(job_id=job_id):  # the claim adds the tenant and batch (worker/attempts.py)
                outcome = fn(context(), job_id)
            if outcome == UNKNOWN:
                observer.unknown_job()  # /metrics: voicefarm_unknown_job_messages_total
            context().crash_point("before_ack")
            return outcome

    job_task(SYNTHESIZE_TASK, run_synthesis)
    job_task(CLONE_TASK, run_clone)
    return app


def _send_check(app: Celery, ctx: WorkerContext, job_id: str) -> None:
    """A take waits for the QA pool: send its check, with time limits for the take's duration, and for a batch
    line let the scheduler send the next line now, so the engine does not idle while the take is checked."""
    with ctx.sessions() as session:
        job = session.get(Job, job_id)
        batch_line = job is not None and job.batch_id is not None
        duration_s = float(((job.result or {}) if job is not None else {}).get("duration_s") or 0.0)
    enqueue_check(app, job_id, CheckLimits.from_settings(ctx.settings).for_take(duration_s))
    if batch_line:
        scheduler.safe_top_up(ctx.sessions, app, ctx.settings.batch_window_per_worker, ctx.settings.worker_live_s)


def _after_lost_retry(ctx: WorkerContext, job_id: str, exc: Exception, exhausted: bool) -> None:
    try:
        with transaction(ctx.sessions) as session:
            job = session.get(Job, job_id)
            if job is None:
                return
            if exhausted and isinstance(exc, Transient):
                message = f"a dependency stayed unavailable through {ctx.settings.task_max_retries} retries"
                if jobs.give_up(session, job_id, job.attempts, "retries_exhausted", message):
                    log.error("job %s: %s", job_id, message)
                    session.commit()
                    ctx.notify(job_id)
                    return
            # The retry message never reached the broker: have the reconciler send a new one.
            jobs.mark_unsent(session, job_id)
    except Exception:
        log.warning("job %s: could not record a lost retry; the reconciler will find it", job_id, exc_info=True)
