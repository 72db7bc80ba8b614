"""The Celery app, built from settings; both the producer (to send) and the worker (to run) use it.

This module imports no engine code: the producer sends tasks by name and never loads a model.
"""

from __future__ import annotations

from celery import Celery

from shared.config import Settings

SYNTHESIZE_TASK = "voicefarm.synthesize"
CLONE_TASK = "voicefarm.clone"
TASKS = {"synthesize": SYNTHESIZE_TASK, "clone": CLONE_TASK}
# Redis delivers unacked messages again after this long; a task running longer is redelivered, which the
# conditional job transitions make harmless.
VISIBILITY_TIMEOUT_S = 900


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
        # Loading a model in worker_process_init takes longer than Celery's default 4 s allowance.
        worker_proc_alive_timeout=300,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": VISIBILITY_TIMEOUT_S,
            "priority_steps": list(range(10)),
            "queue_order_strategy": "priority",
        },
        task_default_queue=engine_queue(settings.engine),
    )
    return app


def redis_priority(priority: int) -> int:
    """API priority is 0 (lowest) to 9 (most urgent); kombu's Redis transport serves 0 first."""
    return 9 - max(0, min(9, priority))


def enqueue_job(app: Celery, job_id: str, kind: str, engine: str, priority: int) -> None:
    """Send a job's task; the job row must already be committed."""
    app.send_task(TASKS[kind], args=[job_id], queue=engine_queue(engine), priority=redis_priority(priority))
