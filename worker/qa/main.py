"""Celery entry point of the QA worker (`celery -A worker.qa.main`); `voicefarm qa-worker` starts it."""

from worker.qa.app import create_qa_app

app = create_qa_app()
