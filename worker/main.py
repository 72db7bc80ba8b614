"""Celery entry point (`celery -A worker.main`); `voicefarm worker` starts it."""

from worker.celery_app import create_worker_app

app = create_worker_app()
