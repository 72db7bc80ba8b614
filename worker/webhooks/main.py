"""Celery entry point of the webhook worker (`celery -A worker.webhooks.main`); `voicefarm webhook-worker` starts it."""

from worker.webhooks.app import create_webhook_app

app = create_webhook_app()
