"""WSGI entry point for gunicorn: `gunicorn producer.wsgi:app`. It refuses to serve without a secret key
(shared/secrets.py), as `voicefarm api` does before it starts gunicorn."""

from producer.app import create_app
from shared.config import load_settings
from shared.secrets import require_secret_key

settings = load_settings()
require_secret_key(settings)
app = create_app(settings)
