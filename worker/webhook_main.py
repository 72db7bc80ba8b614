"""Celery entry point of the webhook worker (`celery -A worker.webhook_main`); `voicefarm webhook-worker` starts it."""

from worker.webhook_app import create_webhook_app

app = create_webhook_app()
