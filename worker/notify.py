"""What follows a job reaching a final state, in whichever pool finished it (the synthesis worker, or the QA pool
for a gated take): its webhook when it asked for one; for a batch line, the batch's final event when this line
finished the batch (shared/jobs/settle.py), and a refill of its tenant's window (shared/batches/scheduler.py).

A synthesis worker announces through `Announcer`, off the engine's path: the announcement reads the job back and
writes latency metrics to Redis, and the engine need not wait for that before its next job. Everything announced
is best effort already: the reconciler sends owed webhooks and refills batch windows when a worker never did."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from shared.batches import scheduler
from shared.config import Settings
from shared.metrics import JobObserver
from shared.models import Job
from shared.queue import enqueue_batch_webhook, enqueue_webhook
from shared.webhooks import deliveries

log = logging.getLogger(__name__)


def job_finished(
    app: Celery,
    sessions: sessionmaker[Session],
    settings: Settings,
    job_id: str,
    observer: JobObserver | None = None,
) -> None:
    batch_line = False
    try:
        with sessions() as session:
            job = session.get(Job, job_id)
            wanted = job is not None and bool(job.webhook_url)
            batch_id = job.batch_id if job is not None else None
            batch_line = batch_id is not None
            batch_owed = batch_id is not None and deliveries.batch_owed(session, batch_id)
            if job is not None and observer is not None:
                observer.observe(job)
        if wanted:
            enqueue_webhook(app, job_id)
        if batch_owed and batch_id is not None:
            enqueue_batch_webhook(app, batch_id)
    except Exception:  # the reconciler sends webhooks that were never attempted
        log.warning("job %s: could not queue its webhook", job_id, exc_info=True)
    if batch_line:
        scheduler.safe_top_up(sessions, app, settings.batch_window_per_worker, settings.worker_live_s)


class Announcer:
    """Runs `announce(job_id)` in one background thread, in the order jobs finished; a failure is logged and the
    next one runs. Daemon thread: at exit, what is left is the reconciler's (see the module docstring)."""

    def __init__(self, announce: Callable[[str], None]) -> None:
        self._announce = announce
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="voicefarm-announce", daemon=True)
        self._thread.start()

    def __call__(self, job_id: str) -> None:
        self._queue.put(job_id)

    def close(self, timeout: float = 1.0) -> None:
        """Announce what is queued, waiting at most `timeout` seconds."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (job_id := self._queue.get()) is not None:
            try:
                self._announce(job_id)
            except Exception:
                log.warning("job %s: its announcement failed", job_id, exc_info=True)
