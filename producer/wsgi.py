"""WSGI entry point for gunicorn: `gunicorn producer.wsgi:app`."""

from producer.app import create_app

app = create_app()
