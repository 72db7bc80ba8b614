"""Flask application factory for the API and web UI."""

from __future__ import annotations

from typing import Any

import redis
from flask import Flask, render_template

from producer.api.batches import bp as batches_bp
from producer.api.catalog import bp as catalog_bp
from producer.api.consent import bp as consent_bp
from producer.api.docs import bp as docs_bp
from producer.api.health import bp as health_bp
from producer.api.jobs import bp as jobs_bp
from producer.api.join import bp as join_bp
from producer.api.lexicon import bp as lexicon_bp
from producer.api.metrics import bp as metrics_bp
from producer.api.review import bp as review_bp
from producer.api.speech import bp as speech_bp
from producer.api.verify import bp as verify_bp
from producer.api.voices import bp as voices_bp
from producer.api.webhooks import bp as webhooks_bp
from producer.errors import register_error_handlers
from producer.intake import init_intake
from producer.limits import init_cors, init_limits
from producer.openapi import openapi_document
from producer.resources import Farm, farm
from shared.config import Settings, load_settings
from shared.db import make_engine, make_session_factory
from shared.engines.fleet import Fleet
from shared.logs import setup_logging
from shared.queue import make_celery
from shared.storage import Storage


def create_app(settings: Settings | None = None, **overrides: Any) -> Flask:
    settings = settings or load_settings(**overrides)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    setup_logging(settings.log_format)

    sessions = make_session_factory(make_engine(settings.resolved_database_url()))
    app.extensions["voicefarm"] = Farm(
        settings=settings,
        sessions=sessions,
        storage=Storage.from_settings(settings),
        celery=make_celery(settings),
        # What live workers published when they registered; the producer never builds an engine. Its own
        # connection pool: handlers ask while holding a connection of theirs (shared/engines/fleet.py).
        fleet=Fleet(
            make_session_factory(make_engine(settings.resolved_database_url())), settings.engine, settings.worker_live_s
        ),
        streams=redis.Redis.from_url(settings.broker_url, socket_timeout=10, socket_connect_timeout=2),
    )
    init_cors(app, settings.cors_origins)
    init_limits(app, settings.broker_url, settings.rate_limit_per_minute)
    init_intake(app)  # each endpoint's body cap, checked before any body is read; depth-checked JSON
    register_error_handlers(app)
    app.register_blueprint(health_bp)
    app.register_blueprint(jobs_bp)
    app.register_blueprint(voices_bp)
    app.register_blueprint(consent_bp)
    app.register_blueprint(catalog_bp)
    app.register_blueprint(webhooks_bp)
    app.register_blueprint(batches_bp)
    app.register_blueprint(review_bp)  # the review queue and decisions, and the page at /batches/<id>/review
    app.register_blueprint(speech_bp)
    app.register_blueprint(lexicon_bp)
    app.register_blueprint(verify_bp)  # is this file the farm's: watermark and label
    app.register_blueprint(metrics_bp)
    app.register_blueprint(join_bp)  # worker hosts joining with a join token

    app.register_blueprint(docs_bp)
    app.extensions["voicefarm.openapi"] = openapi_document()

    @app.get("/")
    def index() -> str:
        resources = farm()
        return render_template(
            "index.html",
            capabilities=resources.capabilities,
            engines=list(resources.fleet.offered()),
            max_chars=resources.settings.max_text_chars,
        )

    return app
