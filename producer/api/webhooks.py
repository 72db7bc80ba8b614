"""Webhook signing secrets (one per API key) and the record of a job's delivery attempts."""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify
from sqlalchemy import select, update

from producer.auth import authenticate
from producer.resources import farm
from shared.jobs import state as jobs
from shared.jobs.views import delivery_view
from shared.keys import new_webhook_secret
from shared.models import ApiKey, Job
from shared.secrets import SecretBox
from shared.webhooks import deliveries

bp = Blueprint("webhooks", __name__, url_prefix="/v1")
SIGNING = {
    "algorithm": "HMAC-SHA256",
    "signed_payload": "<Voicefarm-Timestamp>.<raw request body>",
    "headers": {
        "signature": "Voicefarm-Signature",
        "timestamp": "Voicefarm-Timestamp",
        "event_id": "Voicefarm-Event-Id",
    },
}


@bp.get("/webhook-secret")
def secret() -> Response:
    """The calling key's signing secret: it signs the webhooks of every job this key submits."""
    with farm().sessions() as session:
        authenticate(session)
        stored = session.scalar(select(ApiKey.webhook_secret).where(ApiKey.id == g.api_key_id))
    value = SecretBox.from_settings(farm().settings).open(stored) if stored else stored  # stored encrypted
    return jsonify({"key_id": g.api_key_id, "secret": value, **SIGNING})


@bp.post("/webhook-secret/rotate")
def rotate() -> Response:
    """A new signing secret for the calling key; attempts from now on are signed with it."""
    value = new_webhook_secret()
    sealed = SecretBox.from_settings(farm().settings).seal(value)  # stored encrypted (shared/secrets.py)
    with farm().sessions() as session, session.begin():
        authenticate(session)
        session.execute(update(ApiKey).where(ApiKey.id == g.api_key_id).values(webhook_secret=sealed))
    return jsonify({"key_id": g.api_key_id, "secret": value, **SIGNING})


@bp.get("/jobs/<job_id>/webhook-deliveries")
def attempts(job_id: str) -> Response:
    """Every delivery attempt of the job's webhook, oldest first."""
    with farm().sessions() as session:
        job = jobs.get_job(session, authenticate(session), job_id)
        rows = deliveries.deliveries(session, Job, job.id)
    return jsonify({"job_id": job.id, "deliveries": [delivery_view(row) for row in rows]})
