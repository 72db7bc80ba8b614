"""The webhook worker: its Celery app and entry module, and delivery over the checked address."""
