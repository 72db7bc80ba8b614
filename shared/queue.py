"""The Celery app, built from settings; both the producer (to send) and the worker (to run) use it.

This module imports no engine code: the producer sends tasks by name and never loads a model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.db import transaction
from shared.jobs import state as jobs

SYNTHESIZE_TASK = "voicefarm.synthesize"
CLONE_TASK = "voicefarm.clone"
WEBHOOK_TASK = "voicefarm.webhook"
BATCH_WEBHOOK_TASK = "voicefarm.batch_webhook"
# Webhook deliveries have their own queue and worker pool: a slow receiver never holds an engine slot.
WEBHOOK_QUEUE = "webhooks"
# The QA gate checks takes on its own queue and worker pool: an engine never waits for a check.
QA_TASK = "voicefarm.qa_check"
QA_QUEUE = "qa"
TASKS = {"synthesize": SYNTHESIZE_TASK, "clone": CLONE_TASK}
# Batch lines are sent at the lowest priority: single jobs, sent at their own, run ahead of every batch line.
BATCH_PRIORITY = 0
log = logging.getLogger(__name__)


def engine_queue(engine: str) -> str:
    """Jobs are routed by engine so a fleet mixing engines (CPU kokoro, GPU cosyvoice) works."""
    return f"engine.{engine}"


def make_celery(settings: Settings) -> Celery:
    app = Celery("voicefarm", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        # Task events for Flower and any Celery event consumer (Flower runs unmodified against the broker).
        worker_send_task_events=True,
        task_send_sent_event=True,
        # Loading a model in worker_process_init takes longer than Celery's default 4 s allowance.
        worker_proc_alive_timeout=300,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": visibility_timeout_s(settings),
            **_restore_sweep(settings),
            "priority_steps": list(range(10)),
            "queue_order_strategy": "priority",
        },
        task_default_queue=engine_queue(settings.engine),
        # Fail a send fast when Redis is down: the job row is committed and the reconciler re-sends it.
        broker_connection_timeout=2,
        broker_connection_max_retries=1,
        task_publish_retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5},
    )
    return app


def queue_keys(queue: str) -> list[str]:
    """The Redis lists of one queue: kombu keeps one per priority step, "<queue>" and "<queue>\x06\x16<step>"."""
    return [queue, *(f"{queue}\x06\x16{step}" for step in range(1, 10))]


def visibility_timeout_s(settings: Settings) -> int:
    """Longer than the longest hard time limit a job or a QA check can get, unless a test set it shorter."""
    if settings.broker_visibility_timeout_s:
        return settings.broker_visibility_timeout_s
    longest = max(time_limits("clone", 0)[1], time_limits("synthesize", settings.max_text_chars)[1])
    return int(max(longest, CheckLimits.from_settings(settings).longest()[1])) + 300


def _restore_sweep(settings: Settings) -> dict[str, int]:
    # kombu sweeps for messages past the visibility timeout every interval x throttle seconds (100 s by default);
    # a shortened timeout (tests) gets a sweep to match.
    if not settings.broker_visibility_timeout_s:
        return {}
    return {
        "unacked_restore_interval": max(1, settings.broker_visibility_timeout_s // 3),
        "unacked_restore_throttle": 1,
    }


def redis_priority(priority: int) -> int:
    """API priority is 0 (lowest) to 9 (most urgent); kombu's Redis transport serves 0 first."""
    return 9 - max(0, min(9, priority))


def time_limits(kind: str, text_chars: int) -> tuple[float, float]:
    """Soft and hard limits in seconds, growing with the text: a CPU engine speaks ~2 chars/s at worst."""
    if kind == "clone":
        return 300.0, 360.0
    soft = 120.0 + 2.0 * text_chars
    return soft, soft + 60.0


@dataclass(frozen=True)
class CheckLimits:
    """A QA check's time limits grow with the take it checks: soft `base_s + per_audio_s x duration`, capped at
    `cap_s` (so that the broker's visibility timeout covers the longest), hard 30 s later."""

    base_s: float = 120.0
    per_audio_s: float = 4.0
    cap_s: float = 3600.0

    @classmethod
    def from_settings(cls, settings: Settings) -> CheckLimits:
        return cls(
            settings.qa_check_time_base_s,
            settings.qa_check_time_per_audio_s,
            max(settings.qa_check_time_base_s, time_limits("synthesize", settings.max_text_chars)[0]),
        )

    def for_take(self, duration_s: float) -> tuple[float, float]:
        soft = min(self.cap_s, self.base_s + self.per_audio_s * max(0.0, duration_s))
        return round(soft, 3), round(soft + 30.0, 3)

    def longest(self) -> tuple[float, float]:
        return self.cap_s, self.cap_s + 30.0


def fair_priority(priority: int, ahead: int) -> int:
    """The priority to send an interactive job at, given how many of its tenant's interactive jobs are queued or
    running (`ahead`): one step lower per doubling (0 ahead: as asked; 1: -1; 2-3: -2; 4-7: -3; ...), never
    below 1, so a tenant's burst goes behind other tenants' first jobs yet stays ahead of every batch line (0).
    A job asked at 0 or 1 is sent as asked."""
    if priority <= 1:
        return priority
    return max(1, priority - ahead.bit_length())


def enqueue_job(app: Celery, job_id: str, kind: str, engine: str, priority: int, text_chars: int = 0) -> None:
    """Send a job's task; the job row must already be committed."""
    soft, hard = time_limits(kind, text_chars)
    app.send_task(
        TASKS[kind],
        args=[job_id],
        queue=engine_queue(engine),
        priority=redis_priority(priority),
        soft_time_limit=soft,
        time_limit=hard,
    )


def try_enqueue(
    app: Celery,
    job_id: str,
    kind: str,
    engine: str,
    priority: int,
    text_chars: int = 0,
    sessions: sessionmaker[Session] | None = None,
) -> bool:
    """Enqueue, but treat a broker outage as survivable: the row is committed, so the reconciler sends the task
    once the broker is back. With `sessions`, the job is an interactive one sent at its fair priority
    (`fair_priority`: lower the more of its tenant's jobs wait or run), and a send that worked is recorded on the
    job (`sent_at`), which is how the reconciler tells a job whose send failed from one the broker holds. Returns
    whether the send succeeded."""
    if sessions is not None:
        priority = send_priority(sessions, job_id, priority)
    try:
        enqueue_job(app, job_id, kind, engine, priority, text_chars)
    except Exception:  # kombu raises several connection error types; all mean "not sent"
        log.warning("could not enqueue job %s; the reconciler will send it", job_id, exc_info=True)
        return False
    if sessions is not None:
        try:
            with transaction(sessions) as session:
                jobs.mark_sent(session, job_id)
        except Exception:  # the job is in the broker; at worst the reconciler sends a duplicate, which is harmless
            log.warning("could not record the send of job %s", job_id, exc_info=True)
    return True


def send_priority(sessions: sessionmaker[Session], job_id: str, priority: int) -> int:
    """The fair priority of an interactive job's send now; as asked when the database cannot say (the send still
    goes out: fairness is not worth a lost send)."""
    try:
        with sessions() as session:
            return fair_priority(priority, jobs.interactive_ahead(session, job_id))
    except Exception:
        log.warning("could not count the jobs ahead of job %s; sending it at priority %d", job_id, priority)
        return priority


def enqueue_webhook(app: Celery, job_id: str) -> None:
    """Send a finished job's webhook delivery to the webhook workers."""
    app.send_task(WEBHOOK_TASK, args=[job_id], queue=WEBHOOK_QUEUE)


def enqueue_batch_webhook(app: Celery, batch_id: str) -> None:
    """Send a finished batch's final event to the webhook workers."""
    app.send_task(BATCH_WEBHOOK_TASK, args=[batch_id], queue=WEBHOOK_QUEUE)


def enqueue_check(app: Celery, job_id: str, limits: tuple[float, float] | None = None) -> None:
    """Send a stored take's check to the QA workers, with its own (soft, hard) time limits (`CheckLimits`:
    they grow with the take); without them the task's defaults apply."""
    if limits is None:
        app.send_task(QA_TASK, args=[job_id], queue=QA_QUEUE)
        return
    app.send_task(QA_TASK, args=[job_id], queue=QA_QUEUE, soft_time_limit=limits[0], time_limit=limits[1])
