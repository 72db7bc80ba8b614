"""The webhook worker's Celery app: delivery tasks on their own queue, with a light context and no engine.

`voicefarm webhook-worker` runs it (entry module worker/webhooks/main.py). Nothing here imports an engine, so its
processes are small and a slow receiver never holds a synthesis slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import Celery
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings, load_settings
from shared.db import make_engine, make_session_factory
from shared.errors import Unavailable
from shared.queue import BATCH_WEBHOOK_TASK, WEBHOOK_QUEUE, WEBHOOK_TASK, make_celery
from shared.storage import Storage
from worker.pool import PerProcess
from worker.webhooks.deliver import WebhookFailed, deliver_batch_webhook, deliver_webhook


@dataclass
class WebhookContext:
    """What a delivery needs: settings, database sessions, and storage to presign the result's URL."""

    settings: Settings
    sessions: sessionmaker[Session]
    storage: Storage

    @classmethod
    def build(cls, settings: Settings) -> WebhookContext:
        return cls(
            settings=settings,
            sessions=make_session_factory(make_engine(settings.resolved_database_url())),
            storage=Storage.from_settings(settings),
        )


def create_webhook_app(settings: Settings | None = None) -> Celery:
    settings = settings or load_settings()
    app = make_celery(settings)
    app.conf.task_default_queue = WEBHOOK_QUEUE
    context = PerProcess(lambda: WebhookContext.build(settings))

    # The deliveries table caps attempts per event; Celery's own limit only bounds re-sends during a database
    # outage, when attempts cannot even be claimed.
    time_limit = settings.webhook_connect_timeout_s + settings.webhook_timeout_s + 30

    options: dict[str, Any] = {
        "autoretry_for": (WebhookFailed, OperationalError, Unavailable),
        "retry_backoff": settings.webhook_retry_backoff_s,
        "retry_backoff_max": settings.webhook_retry_backoff_max_s,
        "retry_jitter": True,
        "max_retries": settings.webhook_max_attempts + 5,
        "soft_time_limit": time_limit,
        "time_limit": time_limit + 15,
    }

    @app.task(name=WEBHOOK_TASK, **options)
    def webhook(job_id: str) -> str:
        return deliver_webhook(context(), job_id)

    # A batch's final event: the same queue, retries and records; building its body stores the manifest too.
    @app.task(name=BATCH_WEBHOOK_TASK, **options)
    def batch_webhook(batch_id: str) -> str:
        return deliver_batch_webhook(context(), batch_id)

    return app
