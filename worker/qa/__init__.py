"""The QA gate's worker: its Celery app and entry module, the step a task runs, and the checks."""
