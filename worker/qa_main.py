"""Celery entry point of the QA worker (`celery -A worker.qa_main`); `voicefarm qa-worker` starts it."""

from worker.qa_app import create_qa_app

app = create_qa_app()
